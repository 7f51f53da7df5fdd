import Foundation
import KilnBackends
import KilnCore
import KilnLogs
import KilnStore
import Logging
import Metrics

/// The life of a workload on its lane: start, run, store its end, release its waiters.
extension Engine {
    func launch(_ job: Job) {
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
                if !j.claimed { queue.finished(j.tenant) }
                // In a cluster the next workload is claimed from the shared queue.
                if !shuttingDown, cluster == nil, let next = queue.next() {
                    current = next
                } else {
                    current = nil
                    runningCount -= 1
                    idleLanes.append(lane)
                }
                lock.unlock()
                recordCounts()
            }
            cluster?.scheduleClaim()
        }
    }

    func run(_ job: Job) {
        let id = job.spec.id
        let started = Millis.now()
        if job.cancellation.reason != nil {
            finishUnstarted(job, status: job.cancellation.reason == .killed ? .killed : .failed,
                            error: job.cancellation.reason == .killed ? "killed before it started" : "server shutdown")
            return
        }
        // A claimed workload was stored `running` by its claim.
        if !job.claimed {
            do {
                let backendName = job.backend.name
                try store.transition(id, to: .running) { r in
                    r.startedAt = started
                    r.isolationUsed = backendName
                }
            } catch {
                logger.error("cannot start workload \(id): \(error)")
                if StorageHealth.isStorageFailure(error) { storageFailed("\(error)") }
                finishUnstarted(job, status: .failed, error: "cannot start: \(error)")
                return
            }
        }
        let writer = EngineLogWriter(id: id, engine: self, cancellation: job.cancellation)
        let result = job.backend.execute(job.spec, writer: writer, cancellation: job.cancellation)
        writer.finish()
        let finished = Millis.now()
        let (status, error) = Engine.outcome(result, cancel: job.cancellation.reason)
        let output = result.output.map { ($0.text, result.outputTruncated) } ?? OutputCapture.value(of: writer.stdout, truncated: writer.stdoutTruncated)
        let lines = writer.lastSeq
        let logTruncated = writer.logTruncated
        let exitCode = result.exitCode
        storeWriter.async(id, urgent: true) { [self] in
            storeEnd(job, PendingEnd(status: status, error: error) { r in
                r.exitCode = exitCode
                r.outputJSON = output.0
                r.outputTruncated = output.1
                r.logLines = lines
                r.logTruncated = logTruncated
                r.finishedAt = finished
                r.durationMs = finished - started
            })
        }
    }

    static func outcome(_ r: ExecutionResult, cancel: CancelReason?) -> (WorkloadStatus, String?) {
        switch cancel {
        case .killed: return (.killed, "killed by request")
        case .shutdown: return (.failed, "server shutdown")
        // The writer words it with the store's own error (`storeEnd`).
        case .storage: return (.failed, "cannot store the log")
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
    func finishUnstarted(_ job: Job, status: WorkloadStatus, error: String) {
        let at = Millis.now()
        storeWriter.async(job.spec.id, urgent: true) { [self] in
            storeEnd(job, PendingEnd(status: status, error: error) { r in r.finishedAt = at })
        }
    }

    /// After the terminal state is stored: close the live log, call completions.
    func complete(_ job: Job, _ record: WorkloadRecord) {
        broker.close(record.id, end: EndInfo(record: record))
        lock.lock()
        jobs[record.id] = nil
        let callbacks = job.completions.withLock { c in defer { c.removeAll() }; return c }
        lock.unlock()
        for c in callbacks { c(record) }
        idle.lock()
        idle.broadcast()
        idle.unlock()
    }

    /// Stores a batch of lines, then lets the broker drop them from memory. Called on the
    /// workload's reader thread, which waits here while too much is unstored (`StoreBacklog`).
    func persist(_ id: String, _ lines: [LogLine], last: Bool = false) {
        guard let lastSeq = lines.last?.seq else { return }
        let bytes = StoreBacklog.cost(lines)
        backlog.admit(id, bytes: bytes)
        // A workload's last batch goes ahead of other workloads' bulk, as its end does.
        storeWriter.async(id, urgent: last) { [self] in
            defer { backlog.release(id, bytes: bytes) }
            // Lines after one the store refused wait behind it, so the log stays gap-free.
            if holdIfBehind(id, lines) { return }
            do {
                try retryingOutage { try store.appendLines(id, lines) }
                broker.markPersisted(id, upTo: lastSeq)
            } catch {
                logBatchFailed(id, lines, error)
            }
        }
        Metrics.Counter(label: "kiln_log_lines_total").increment(by: lines.count)
    }
}
