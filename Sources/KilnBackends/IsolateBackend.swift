import Foundation
import KilnCore
import KilnLogs
import KilnProcess
import Logging

/// Runs JavaScript in V8 isolates inside one long-running Node host (isolate/host.mjs):
/// started when first needed, restarted when it dies, stopped with Kiln. Each workload runs
/// in a worker of its own with heap limits from `mem_mb`, in a `vm` context holding only
/// `console`; its default export's return value is the output.
public final class IsolateBackend: Backend, Sendable {
    public let name: Isolation = .isolate
    let host: IsolateHost

    public init(nodePath: String? = RuntimeLocator.find("node"), scriptFolder: String, logger: Logger) {
        host = IsolateHost(nodePath: nodePath, scriptFolder: scriptFolder, logger: logger)
    }

    public func capabilities() -> BackendCapabilities {
        let probe = host.probe()
        return BackendCapabilities(
            name: .isolate, available: probe == nil, reason: probe, runtimes: probe == nil ? [.node] : [],
            isolation: "V8 isolate",
            limits: [
                ("timeout", .bool(true)),
                ("memory", .string("V8 heap limit per worker (resourceLimits), host RSS watch for off-heap memory")),
                ("cpu", .string("timeout only")),
                ("disk", .string("nothing to write: no filesystem in the context")),
            ],
            network: "none (no fetch, sockets or require in the context)",
            filesystem: "none")
    }

    public func execute(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        host.run(spec, writer: writer, cancellation: cancellation)
    }

    public func shutdown() {
        host.stop()
    }
}

/// The Node host process and the runs in flight on it.
final class IsolateHost: Sendable {
    let nodePath: String?
    let scriptFolder: String
    let logger: Logger
    private struct State {
        var child: ChildProcess?
        var runs: [String: IsolateRun] = [:]
        var stopped = false
        var generation = 0
    }
    private let state = Locked(State())

    init(nodePath: String?, scriptFolder: String, logger: Logger) {
        self.nodePath = nodePath
        self.scriptFolder = scriptFolder
        self.logger = logger
    }

    /// Nil when a trivial workload runs; else why not.
    func probe() -> String? {
        guard nodePath != nil else { return "node is not installed in \(RuntimeLocator.minimalPath)" }
        let spec = ExecutionSpec(id: "probe-\(UUID().uuidString)", runtime: .node, code: "export default (x) => x + 1",
                                 inputJSON: "41", env: [:], resources: Resources(cpus: 1, memMB: 64, timeoutS: 10))
        let writer = CollectingWriter()
        let r = run(spec, writer: writer, cancellation: Cancellation())
        if r.error == nil, r.output == .int(42) { return nil }
        return "the isolate host did not run a trivial workload: \(r.error ?? "output \(r.output?.text ?? "none")")"
    }

    func stop() {
        let c = state.withLock { s in
            s.stopped = true
            defer { s.child = nil }
            return s.child
        }
        c?.closeStdin()
        c?.stop()
    }

    /// The running host, started on demand.
    private func ensureHost() throws -> ChildProcess {
        // Held through the spawn: a second caller waits for this host instead of starting one.
        try state.withLock { s in try ensureHost(&s) }
    }

    private func ensureHost(_ s: inout State) throws -> ChildProcess {
        if s.stopped { throw SpawnError(description: "the isolate host is stopped") }
        if let child = s.child { return child }
        guard let nodePath else { throw SpawnError(description: "node is not installed") }
        try FileManager.default.createDirectory(atPath: scriptFolder, withIntermediateDirectories: true)
        let script = "\(scriptFolder)/host.mjs"
        try Data(PackageResources.host_mjs).write(to: URL(fileURLWithPath: script))
        let c = try ChildProcess.spawn(SpawnSpec(
            executable: nodePath, arguments: ["node", script],
            environment: ["PATH": RuntimeLocator.minimalPath, "HOME": scriptFolder],
            workingDirectory: scriptFolder, usePIDNamespace: ChildProcess.pidNamespacesWork, stdinPipe: true))
        s.child = c
        s.generation += 1
        let gen = s.generation
        let thread = Thread { [self] in readLoop(c, generation: gen) }
        thread.name = "kiln-isolate-host"
        thread.start()
        return c
    }

    /// The longest message line read from the host.
    static let maxMessageBytes = 16 << 20

    /// What the server log keeps of a line the host wrote to stderr. The host's own notes
    /// (`kiln-isolate: …`) are its own text; lines it relays from an executor process
    /// (`kiln-isolate[pid]: …`: V8 and Node diagnostics) could quote a workload, whose code
    /// and output never reach the server's log, so only their size is kept.
    static func diagnostic(_ line: String) -> String {
        if line.hasPrefix("kiln-isolate[") {
            let who = line.prefix { $0 != ":" }
            return "isolate host: \(who) wrote a diagnostic line of \(line.utf8.count) bytes"
        }
        return "isolate host: \(line)"
    }

    /// Reads the host's messages until it exits, then fails what was in flight.
    private func readLoop(_ c: ChildProcess, generation gen: Int) {
        // The host sends no line over a few MiB (a result's JSON text is cut to 1 Mi
        // characters, a console call to 1 Mi, each escaped at most sixfold): the bound keeps
        // a broken host from growing the server without one.
        var splitter = LineSplitter(maxLineBytes: IsolateHost.maxMessageBytes)
        var stderr = LineSplitter()
        let exit = c.drive(deadline: nil, tickMillis: 1000, graceMillis: 500, onOutput: { stream, bytes in
            if stream == .stdout {
                splitter.feed(bytes) { dispatch($0) }
            } else {
                stderr.feed(bytes) { logger.notice("\(IsolateHost.diagnostic($0))") }
            }
        }, onTick: {})
        splitter.finish { dispatch($0) }
        let orphans = state.withLock { s in
            if s.generation == gen { s.child = nil }
            defer { s.runs.removeAll() }
            return s.runs
        }
        if !orphans.isEmpty || exit.status != 0 {
            logger.warning("isolate host exited with status \(exit.status); \(orphans.count) runs failed")
        }
        for run in orphans.values {
            run.post(.finished(ExecutionResult(exitCode: 1, error: "the isolate host crashed (exit status \(exit.status))")))
        }
    }

    private func dispatch(_ text: String) {
        guard let msg = try? JSON.parse(text), let type = msg["type"]?.stringValue else {
            // Its text could be a workload's output: only its size is logged.
            if !text.isEmpty { logger.warning("isolate host sent an unreadable line of \(text.utf8.count) bytes") }
            return
        }
        if type == "ready" { return }
        guard let id = msg["id"]?.stringValue else {
            logger.warning("isolate host: \(msg["error"]?.stringValue ?? text)")
            return
        }
        let run = state.withLock { s in
            defer { if type != "log" { s.runs[id] = nil } }
            return s.runs[id]
        }
        guard let run else { return }
        switch type {
        case "log":
            run.post(.log(msg["stream"]?.stringValue == "stderr" ? .stderr : .stdout, msg["line"]?.stringValue ?? ""))
        case "result":
            var result = ExecutionResult(exitCode: 0, output: msg["output"] ?? .null)
            if msg["truncated"] == .bool(true) { result.outputTruncated = true }
            run.post(.finished(result))
        default:
            let reason = msg["reason"]?.stringValue ?? "exception"
            let error = msg["error"]?.stringValue ?? "the workload failed"
            run.post(.finished(ExecutionResult(exitCode: 1, timedOut: reason == "timeout", cancelled: reason == "killed", error: error)))
        }
    }

    func run(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        let run = IsolateRun()
        defer { run.close() }
        let host: ChildProcess
        do {
            host = try ensureHost()
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot start the isolate host: \(error)")
        }
        state.withLock { $0.runs[spec.id] = run }
        let input = (try? JSON.parse(spec.inputJSON)) ?? .null
        let message = JSON.object([
            ("type", .string("run")), ("id", .string(spec.id)), ("code", .string(spec.code)), ("input", input),
            ("mem_mb", .int(Int64(spec.resources.memMB))), ("timeout_ms", .int(Int64(min(spec.resources.timeoutS, 2_000_000)) * 1000)),
        ])
        guard host.writeStdin(message.encoded() + [0x0A]) else {
            state.withLock { $0.runs[spec.id] = nil }
            return ExecutionResult(exitCode: nil, error: "the isolate host is not accepting work")
        }
        cancellation.onCancel {
            _ = host.writeStdin(JSON.object([("type", .string("kill")), ("id", .string(spec.id))]).encoded() + [0x0A])
        }
        // The host enforces the timeout; this backstop covers a host that stops answering.
        let backstop = Date().addingTimeInterval(Double(spec.resources.timeoutS) + 10)
        while true {
            switch run.next(timeout: 0.025) {
            case .log(let stream, let line)?:
                writer.writeLine(stream, line)
            case .finished(var result)?:
                if result.timedOut { result.error = "timed out after \(spec.resources.timeoutS) s" }
                if let output = result.output {
                    // Cut by the host: already the start of the JSON text, as a string.
                    let text = result.outputTruncated ? (output.stringValue ?? output.text) : output.text
                    if text.utf8.count > OutputCapture.limit {
                        result.output = .string(String(decoding: Array(text.utf8.prefix(OutputCapture.limit)), as: UTF8.self))
                        result.outputTruncated = true
                    }
                }
                return result
            case nil:
                writer.tick()
                if Date() > backstop {
                    state.withLock { $0.runs[spec.id] = nil }
                    return ExecutionResult(exitCode: nil, timedOut: true, error: "timed out after \(spec.resources.timeoutS) s (the isolate host did not answer)")
                }
            }
        }
    }
}

/// Messages for one run, posted by the reader thread and taken by the run's own thread.
/// Bounded: while more than `limit` bytes of log lines wait, posting a line waits too, so
/// the host's pipe fills and the host's writes block, rather than the server holding a
/// fast printer's lines (the run's own thread waits in turn while the store is behind:
/// `StoreBacklog`). `close` ends every wait once the run's thread has stopped taking.
/// `@unchecked Sendable`: its queue is guarded by an NSCondition, for the timed wait that
/// `Locked` and `Mutex` lack.
final class IsolateRun: @unchecked Sendable {
    enum Event {
        case log(LogStream, String)
        case finished(ExecutionResult)
    }

    static let defaultLimit = 4 << 20
    let limit: Int

    // Guarded by `condition`.
    private let condition = NSCondition()
    private var events: [Event] = []
    private var head = 0
    private var queuedBytes = 0
    private var closed = false

    init(limit: Int = IsolateRun.defaultLimit) {
        self.limit = limit
    }

    func post(_ e: Event) {
        condition.lock()
        defer { condition.unlock() }
        var bytes = 0
        if case .log(_, let line) = e {
            bytes = line.utf8.count
            while !closed && queuedBytes > limit { condition.wait() }
        }
        guard !closed else { return }
        queuedBytes += bytes
        events.append(e)
        condition.broadcast()
    }

    func next(timeout: TimeInterval) -> Event? {
        condition.lock()
        defer { condition.unlock() }
        if head == events.count { _ = condition.wait(until: Date().addingTimeInterval(timeout)) }
        guard head < events.count else { return nil }
        let e = events[head]
        head += 1
        if case .log(_, let line) = e {
            queuedBytes -= line.utf8.count
            condition.broadcast()
        }
        if head > 1024 && head * 2 > events.count {
            events.removeFirst(head)
            head = 0
        }
        return e
    }

    /// The run's thread takes no more: later posts are dropped and no poster waits.
    func close() {
        condition.lock()
        closed = true
        events.removeAll()
        head = 0
        queuedBytes = 0
        condition.broadcast()
        condition.unlock()
    }

    /// Bytes of log lines posted and not yet taken.
    var pendingBytes: Int {
        condition.lock()
        defer { condition.unlock() }
        return queuedBytes
    }
}
