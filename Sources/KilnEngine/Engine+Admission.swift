import Foundation
import KilnBackends
import KilnCore
import KilnLogs
import KilnStore
import Logging
import Metrics

/// Admission: the queue limit, storing the pending record, and kills.
extension Engine {
    /// Stores a pending workload and queues it. `onFinish` is called once with the terminal record.
    public func submit(_ request: SubmitRequest, onFinish: Completion? = nil) throws(EngineError) -> WorkloadRecord {
        if let cluster { return try submitToCluster(request, cluster, onFinish: onFinish) }
        let backend = try chooseBackend(runtime: request.runtime, isolation: request.isolation, code: request.code,
                                        limit: request.isolationLimit)
        if let failure = health.failure { throw .storageUnavailable(failure) }
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
            guard StorageHealth.isStorageFailure(error) else { throw .storage("\(error)") }
            storageFailed("\(error)")
            throw .storageUnavailable("\(error)")
        }
        broker.open(record.id)
        Metrics.Counter(label: "kiln_workloads_submitted_total", dimensions: [("backend", backend.name.rawValue)]).increment()
        let spec = ExecutionSpec(id: record.id, runtime: request.runtime, code: request.code,
                                 inputJSON: request.inputJSON, env: request.env, resources: request.resources)
        let job = Job(spec: spec, backend: backend, tenant: request.tenant)
        if let onFinish { job.completions.withLock { $0.append(onFinish) } }

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
        // A free slot, and the tenant under its share: start. (Whatever waits then is of
        // tenants at their limit, so starting this one passes no one.)
        if runningCount < config.maxConcurrent && queue.mayStart(job.tenant) {
            runningCount += 1
            queue.started(job.tenant)
            start = true
        } else {
            queue.enqueue(job, tenant: job.tenant)
        }
        lock.unlock()
        if start { launch(job) }
        recordCounts()
        return record
    }

    /// Registers `callback` for the end of a live workload; false when it is not live.
    public func whenFinished(_ id: String, _ callback: @escaping Completion) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let job = jobs[id] else { return false }
        job.completions.withLock { $0.append(callback) }
        return true
    }

    /// Kills a workload: a pending one at once, a running one by ending its process tree.
    /// `onFinish` gets the `killed` record.
    public func kill(_ id: String, onFinish: @escaping Completion) throws(EngineError) {
        lock.lock()
        guard let job = jobs[id] else {
            lock.unlock()
            if let cluster { return try killInCluster(id, cluster, onFinish: onFinish) }
            let record: WorkloadRecord?
            do { record = try store.get(id) } catch { throw .storage("\(error)") }
            guard let record else { throw .notFound(id) }
            throw .alreadyFinished(record)
        }
        job.completions.withLock { $0.append(onFinish) }
        if queue.remove(where: { $0 === job }) {
            jobs[id] = nil
            lock.unlock()
            recordCounts()
            finishUnstarted(job, status: .killed, error: "killed before it started")
            return
        }
        lock.unlock()
        job.cancellation.cancel(.killed)
    }

    /// Deletes a workload's record and log. A pending or running one is killed first, and
    /// deleted once its terminal state is stored (its streams get their `end` before).
    /// `onDone` runs on the engine's writer, or at once for a finished workload.
    public func purge(_ id: String, onDone: @escaping @Sendable (Result<Void, EngineError>) -> Void) throws(EngineError) {
        let store = self.store
        let delete: @Sendable () -> Void = {
            do {
                _ = try store.purge(id)
                onDone(.success(()))
            } catch {
                onDone(.failure(.storage("\(error)")))
            }
        }
        do {
            try kill(id) { _ in delete() }
        } catch .alreadyFinished {
            delete()
        }
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
}
