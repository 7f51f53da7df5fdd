import Foundation
import KilnCore
import KilnBackends
import KilnLogs
import KilnStore
import Logging
import Metrics

/// Runs workloads: a queue in front of a Dispatch pool of `maxConcurrent` runs, the
/// state machine through the store, and every log line numbered, stored in batches and
/// published to the broker. A workload's terminal status is stored after its last line,
/// and published after that.
public final class Engine: @unchecked Sendable {
    public typealias Completion = @Sendable (WorkloadRecord) -> Void

    public let store: any WorkloadStore
    public let broker: LogBroker
    let config: EngineConfig
    let logger: Logger
    private let backendList: [any Backend]
    /// Probed once at start.
    public let capabilities: [BackendCapabilities]
    private let ids = ULIDGenerator()
    /// All store writes of log batches and terminal states, in order.
    let writerQueue = DispatchQueue(label: "kiln.store-writer")
    /// The pool: one serial queue per running workload, made on demand and reused.
    /// Serial queues get a thread of their own when they have work; a concurrent
    /// queue would share the global pool, which grows slowly while backends block.
    private var idleLanes: [DispatchQueue] = []
    private var laneCount = 0

    // Guarded by `lock`.
    private let lock = NSLock()
    private var jobs: [String: Job] = [:]
    private var queue: [Job] = []
    private var runningCount = 0
    private var reserved = 0
    private var shuttingDown = false
    private let idle = NSCondition()

    public init(store: any WorkloadStore, broker: LogBroker, backends: [any Backend], config: EngineConfig, logger: Logger) {
        self.store = store
        self.broker = broker
        self.backendList = backends
        self.config = config
        self.logger = logger
        self.capabilities = backends.map { $0.capabilities() }
        try? FileManager.default.createDirectory(atPath: config.workRoot, withIntermediateDirectories: true)
    }

    /// Marks what an earlier process left unfinished as failed ("server restarted").
    @discardableResult
    public func recover() throws -> [String] {
        let ids = try store.failUnfinished(error: "server restarted")
        if !ids.isEmpty { logger.warning("marked \(ids.count) unfinished workloads failed: server restarted") }
        return ids
    }

    // MARK: Backends

    public func capability(_ name: Isolation) -> BackendCapabilities? {
        capabilities.first { $0.name == name }
    }

    private func backend(_ name: Isolation) -> (any Backend)? {
        backendList.first { $0.name == name }
    }

    /// The backends a caller may use: the server's list, narrowed by the token's own.
    public func allowedIsolation(limit: Set<Isolation>?) -> Set<Isolation> {
        limit.map { config.allowedIsolation.intersection($0) } ?? config.allowedIsolation
    }

    /// Strongest first, the order `auto` tries them in (after `isolate` for default exports).
    static let strength: [Isolation] = [.gvisor, .sandbox, .isolate, .process]

    /// `auto`: `isolate` for node code with a default export, else the strongest available
    /// of gvisor, sandbox, process that runs the runtime; only backends in the allowed list
    /// (`allowedIsolation(limit:)`) are ever chosen.
    public func chooseBackend(runtime: Runtime, isolation: Isolation, code: String,
                              limit: Set<Isolation>? = nil) throws(EngineError) -> any Backend {
        let allowed = allowedIsolation(limit: limit)
        if isolation != .auto, !allowed.contains(isolation) {
            throw .isolationNotAllowed(requested: isolation, allowed: Engine.strength.filter(allowed.contains).map(\.rawValue))
        }
        let able = capabilities.filter { $0.available && $0.runtimes.contains(runtime) && allowed.contains($0.name) }
        let ableNames = Engine.strength.filter { name in able.contains { $0.name == name } }.map(\.rawValue)
        if isolation == .auto {
            if runtime == .node, Engine.hasDefaultExport(code), able.contains(where: { $0.name == .isolate }),
               let b = backend(.isolate) {
                return b
            }
            for name in [Isolation.gvisor, .sandbox, .process] where able.contains(where: { $0.name == name }) {
                if let b = backend(name) { return b }
            }
            throw .isolationUnavailable(requested: .auto, reason: "no allowed backend can run \(runtime.rawValue) here", available: ableNames)
        }
        guard let cap = capability(isolation), cap.available else {
            let why = capability(isolation)?.reason ?? "not built into this server"
            throw .isolationUnavailable(requested: isolation, reason: why, available: ableNames)
        }
        guard cap.runtimes.contains(runtime), let b = backend(isolation) else {
            throw .isolationUnavailable(requested: isolation, reason: "it does not run \(runtime.rawValue)", available: ableNames)
        }
        return b
    }

    static func hasDefaultExport(_ code: String) -> Bool {
        code.range(of: #"(^|[\s;{}])export\s+default\b"#, options: .regularExpression) != nil
    }

    // MARK: Submitting

    /// Stores a pending workload and queues it. `onFinish` is called once with the terminal record.
    public func submit(_ request: SubmitRequest, onFinish: Completion? = nil) throws(EngineError) -> WorkloadRecord {
        let backend = try chooseBackend(runtime: request.runtime, isolation: request.isolation, code: request.code,
                                        limit: request.isolationLimit)
        lock.lock()
        if shuttingDown { lock.unlock(); throw .shuttingDown }
        let waiting = queue.count + reserved
        if runningCount + reserved >= config.maxConcurrent && waiting >= config.queueLimit {
            lock.unlock()
            throw .queueFull(retryAfterSeconds: 1)
        }
        reserved += 1
        lock.unlock()

        let record = WorkloadRecord(id: ids.next(), status: .pending, runtime: request.runtime,
                                    isolation: request.isolation, resources: request.resources, createdAt: Millis.now(),
                                    tenant: request.tenant)
        do {
            try store.insert(record)
        } catch {
            lock.lock()
            reserved -= 1
            lock.unlock()
            throw .storage("\(error)")
        }
        broker.open(record.id)
        Metrics.Counter(label: "kiln_workloads_submitted_total", dimensions: [("backend", backend.name.rawValue)]).increment()
        let spec = ExecutionSpec(id: record.id, runtime: request.runtime, code: request.code,
                                 inputJSON: request.inputJSON, env: request.env, resources: request.resources)
        let job = Job(spec: spec, backend: backend, tenant: request.tenant)
        if let onFinish { job.completions.append(onFinish) }

        lock.lock()
        reserved -= 1
        if shuttingDown {
            // Shutdown began while the record was being stored: end it like the queued ones.
            lock.unlock()
            finishUnstarted(job, status: .failed, error: "server shutdown")
            return record
        }
        jobs[record.id] = job
        var start = false
        if runningCount < config.maxConcurrent && queue.isEmpty {
            runningCount += 1
            start = true
        } else {
            queue.append(job)
        }
        lock.unlock()
        if start { launch(job) }
        return record
    }

    /// Registers `callback` for the end of a live workload; false when it is not live.
    public func whenFinished(_ id: String, _ callback: @escaping Completion) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let job = jobs[id] else { return false }
        job.completions.append(callback)
        return true
    }

    /// Kills a workload: a pending one at once, a running one by ending its process tree.
    /// `onFinish` gets the `killed` record.
    public func kill(_ id: String, onFinish: @escaping Completion) throws(EngineError) {
        lock.lock()
        guard let job = jobs[id] else {
            lock.unlock()
            let record: WorkloadRecord?
            do { record = try store.get(id) } catch { throw .storage("\(error)") }
            guard let record else { throw .notFound(id) }
            throw .alreadyFinished(record)
        }
        job.completions.append(onFinish)
        if let index = queue.firstIndex(where: { $0 === job }) {
            queue.remove(at: index)
            jobs[id] = nil
            lock.unlock()
            finishUnstarted(job, status: .killed, error: "killed before it started")
            return
        }
        lock.unlock()
        job.cancellation.cancel(.killed)
    }

    public struct Counts: Sendable {
        public var running: Int
        public var queued: Int
    }

    public var counts: Counts {
        lock.lock()
        defer { lock.unlock() }
        return Counts(running: runningCount, queued: queue.count)
    }

    // MARK: Running

    private func launch(_ job: Job) {
        lock.lock()
        let lane: DispatchQueue
        if let idle = idleLanes.popLast() {
            lane = idle
        } else {
            laneCount += 1
            lane = DispatchQueue(label: "kiln.engine.lane-\(laneCount)")
        }
        lock.unlock()
        lane.async { [self] in
            var current: Job? = job
            // Keep the lane busy while work is queued.
            while let j = current {
                run(j)
                lock.lock()
                if !shuttingDown, !queue.isEmpty {
                    current = queue.removeFirst()
                } else {
                    current = nil
                    runningCount -= 1
                    idleLanes.append(lane)
                }
                lock.unlock()
            }
        }
    }

    private func run(_ job: Job) {
        let id = job.spec.id
        let started = Millis.now()
        if job.cancellation.reason != nil {
            finishUnstarted(job, status: job.cancellation.reason == .killed ? .killed : .failed,
                            error: job.cancellation.reason == .killed ? "killed before it started" : "server shutdown")
            return
        }
        do {
            let backendName = job.backend.name
            try store.transition(id, to: .running) { r in
                r.startedAt = started
                r.isolationUsed = backendName
            }
        } catch {
            logger.error("cannot start workload \(id): \(error)")
            finishUnstarted(job, status: .failed, error: "cannot start: \(error)")
            return
        }
        let writer = EngineLogWriter(id: id, engine: self)
        let result = job.backend.execute(job.spec, writer: writer, cancellation: job.cancellation)
        writer.finish()
        let finished = Millis.now()
        let (status, error) = Engine.outcome(result, cancel: job.cancellation.reason)
        let output = result.output.map { ($0.text, result.outputTruncated) } ?? OutputCapture.value(of: writer.stdout, truncated: writer.stdoutTruncated)
        let lines = writer.lastSeq
        let backendName = job.backend.name.rawValue
        writerQueue.async { [self] in
            let record: WorkloadRecord
            do {
                record = try store.transition(id, to: status) { r in
                    r.exitCode = result.exitCode
                    r.error = error
                    r.outputJSON = output.0
                    r.outputTruncated = output.1
                    r.logLines = lines
                    r.finishedAt = finished
                    r.durationMs = finished - started
                }
            } catch let storeError {
                // Still release the job, its live log and whoever waits for it.
                logger.error("cannot store the end of workload \(id): \(storeError)")
                complete(job, (try? store.get(id)) ?? WorkloadRecord(
                    id: id, status: status, runtime: job.spec.runtime, isolation: .auto, isolationUsed: job.backend.name,
                    exitCode: result.exitCode, error: error, resources: job.spec.resources, logLines: lines, createdAt: started,
                    tenant: job.tenant))
                return
            }
            Metrics.Counter(label: "kiln_workloads_total", dimensions: [("status", status.rawValue), ("backend", backendName)]).increment()
            Metrics.Timer(label: "kiln_workload_duration_seconds", dimensions: [("backend", backendName)])
                .recordMilliseconds(finished - started)
            complete(job, record)
        }
    }

    static func outcome(_ r: ExecutionResult, cancel: CancelReason?) -> (WorkloadStatus, String?) {
        switch cancel {
        case .killed: return (.killed, "killed by request")
        case .shutdown: return (.failed, "server shutdown")
        case nil: break
        }
        if r.timedOut { return (.failed, r.error ?? "timed out") }
        if let e = r.error { return (.failed, e) }
        guard let code = r.exitCode else { return (.failed, "the backend reported no exit status") }
        if code == 0 { return (.completed, nil) }
        if code > 128 && code < 160 { return (.failed, "terminated by signal \(code - 128) (exit code \(code))") }
        return (.failed, "exited with code \(code)")
    }

    /// Ends a workload that never ran (killed or failed while pending).
    private func finishUnstarted(_ job: Job, status: WorkloadStatus, error: String) {
        let id = job.spec.id
        writerQueue.async { [self] in
            let record: WorkloadRecord
            do {
                record = try store.transition(id, to: status) { r in
                    r.error = error
                    r.finishedAt = Millis.now()
                }
            } catch {
                logger.error("cannot end workload \(id): \(error)")
                if let r = try? store.get(id) { complete(job, r) }
                return
            }
            Metrics.Counter(label: "kiln_workloads_total", dimensions: [("status", status.rawValue), ("backend", job.backend.name.rawValue)]).increment()
            complete(job, record)
        }
    }

    /// After the terminal state is stored: close the live log, call completions.
    private func complete(_ job: Job, _ record: WorkloadRecord) {
        broker.close(record.id, end: EndInfo(record: record))
        lock.lock()
        jobs[record.id] = nil
        let callbacks = job.completions
        job.completions.removeAll()
        lock.unlock()
        for c in callbacks { c(record) }
        idle.lock()
        idle.broadcast()
        idle.unlock()
    }

    /// Stores a batch of lines, then lets the broker drop them from memory.
    func persist(_ id: String, _ lines: [LogLine]) {
        guard let last = lines.last?.seq else { return }
        writerQueue.async { [self] in
            do {
                try store.appendLines(id, lines)
                broker.markPersisted(id, upTo: last)
            } catch {
                logger.error("cannot store \(lines.count) log lines of \(id): \(error)")
            }
        }
        Metrics.Counter(label: "kiln_log_lines_total").increment(by: lines.count)
    }

    // MARK: Shutdown

    /// Refuses new work, fails pending workloads, kills running ones ("server shutdown"),
    /// and waits (up to `timeout`) until every line and terminal state is stored.
    public func shutdown(timeout: TimeInterval = 8) {
        lock.lock()
        shuttingDown = true
        let pending = queue
        queue.removeAll()
        for job in pending { jobs[job.spec.id] = nil }
        let live = Array(jobs.values)
        lock.unlock()
        for job in pending { finishUnstarted(job, status: .failed, error: "server shutdown") }
        for job in live { job.cancellation.cancel(.shutdown) }
        let deadline = Date().addingTimeInterval(timeout)
        idle.lock()
        while Date() < deadline {
            lock.lock()
            let remaining = jobs.count
            lock.unlock()
            if remaining == 0 { break }
            _ = idle.wait(until: min(deadline, Date().addingTimeInterval(0.05)))
        }
        idle.unlock()
        writerQueue.sync {}
        for b in backendList { b.shutdown() }
    }
}
