import Foundation
import KilnBackends
import KilnCore
import KilnStore
import Logging
import Metrics

/// A terminal status waiting to be stored: the status, its error, and the rest of the change.
struct PendingEnd: Sendable {
    var status: WorkloadStatus
    var error: String?
    var change: @Sendable (inout WorkloadRecord) -> Void

    /// The record as this end leaves it (the store sets `status` itself).
    func apply(_ r: inout WorkloadRecord) {
        r.status = status
        r.error = error
        change(&r)
    }
}

/// What of one workload the store refused and Kiln still owes it, in the order it must be
/// written: lines from the first batch that failed, then (once the workload has ended) its
/// terminal status. Nothing is dropped, so the stored log stays a gap-free prefix and ends
/// up equal to what live clients were sent.
struct HeldWrites: Sendable {
    /// Set when a batch of its lines failed: the workload is stopped and ends `failed`
    /// naming this cause (SPEC §8).
    var logFailure: String?
    var lines: [LogLine] = []
    var end: PendingEnd?

    /// Something is still to be written (a workload that is only stopping owes nothing yet).
    var owesWrites: Bool { !lines.isEmpty || end != nil }
}

/// Storage errors (SPEC §8): writes the store refused are held, the workload whose lines
/// failed is stopped, every waiter gets a terminal record at once, and a repair pass on the
/// writer stores what is held as soon as the store accepts writes again, then clears
/// `health`: recovery without a restart. Everything here runs on the writer (`FairWriter`).
extension Engine {
    /// A batch of `id`'s lines was refused: hold it, say the store is failing, and stop the
    /// workload (its later output is discarded by its writer, so what is held stays small).
    func logBatchFailed(_ id: String, _ lines: [LogLine], _ error: any Error) {
        let cause = "\(error)"
        logger.error("cannot store \(lines.count) log lines of \(id): \(cause)")
        held.withLock { h in
            var w = h[id] ?? HeldWrites()
            if w.logFailure == nil { w.logFailure = cause }
            w.lines.append(contentsOf: lines)
            h[id] = w
        }
        storageFailed(cause)
        lock.lock()
        let job = jobs[id]
        lock.unlock()
        job?.cancellation.cancel(.storage)
    }

    /// Whether `id` has writes held (its new lines must queue behind them); if so, holds `lines`.
    func holdIfBehind(_ id: String, _ lines: [LogLine]) -> Bool {
        held.withLock { h in
            guard h[id] != nil else { return false }
            h[id]!.lines.append(contentsOf: lines)
            return true
        }
    }

    /// Stores a workload's terminal status (or holds it while the store refuses writes) and
    /// then releases the job: its streams get `end` and its waiters a terminal record, in
    /// either case. A workload whose lines could not be stored ends `failed`, naming why.
    func storeEnd(_ job: Job, _ asked: PendingEnd) {
        let id = job.spec.id
        let (behind, end) = held.withLock { h -> (Bool, PendingEnd) in
            guard var w = h[id] else { return (false, asked) }
            var end = asked
            if let cause = w.logFailure {
                end.status = .failed
                end.error = "cannot store the log: \(cause)"
            }
            w.end = end
            h[id] = w
            return (true, end)
        }
        if behind {
            switch flushHeld(id) {
            case .stored(let record): finishStored(job, record)
            case .stillHeld: complete(job, provisional(job, end)); scheduleRepair()
            }
            return
        }
        do {
            let record = try store.transition(id, to: end.status) { end.apply(&$0) }
            finishStored(job, record)
        } catch where StorageHealth.isStorageFailure(error) {
            logger.error("cannot store the end of workload \(id): \(error); holding it until the store accepts writes")
            held.withLock { $0[id, default: HeldWrites()].end = end }
            storageFailed("\(error)")
            complete(job, provisional(job, end))
        } catch {
            // The state machine refused (it ended some other way first): answer what is stored.
            logger.error("cannot store the end of workload \(id): \(error)")
            complete(job, (try? store.get(id)) ?? provisional(job, end))
        }
    }

    private func finishStored(_ job: Job, _ record: WorkloadRecord) {
        Metrics.Counter(label: "kiln_workloads_total", dimensions: [("status", record.status.rawValue), ("backend", job.backend.name.rawValue)]).increment()
        if let ms = record.durationMs {
            Metrics.Timer(label: "kiln_workload_duration_seconds", dimensions: [("backend", job.backend.name.rawValue)]).recordMilliseconds(ms)
        }
        complete(job, record)
    }

    /// The terminal record as it will be stored: what waiters get while the store refuses it.
    private func provisional(_ job: Job, _ end: PendingEnd) -> WorkloadRecord {
        var r = (try? store.get(job.spec.id)) ?? WorkloadRecord(
            id: job.spec.id, status: .pending, runtime: job.spec.runtime, isolation: .auto, isolationUsed: job.backend.name,
            resources: job.spec.resources, createdAt: Millis.now(), tenant: job.tenant)
        end.apply(&r)
        return r
    }

    /// The terminal record held for `id`, if its end is waiting for the store: a `GET`
    /// answers it rather than the stored `running`.
    public func heldEnd(_ id: String) -> WorkloadRecord? {
        guard let end = held.withLock({ $0[id]?.end }), var r = try? store.get(id) else { return nil }
        end.apply(&r)
        return r
    }

    private enum FlushResult {
        case stored(WorkloadRecord)
        case stillHeld
    }

    /// Writes what is held for `id`, lines first; the entry goes once its end is stored.
    private func flushHeld(_ id: String) -> FlushResult {
        guard let w = held.withLock({ $0[id] }) else { return .stillHeld }
        do {
            if let last = w.lines.last?.seq {
                try store.appendLines(id, w.lines)
                broker.markPersisted(id, upTo: last)
                held.withLock { $0[id]?.lines.removeFirst(w.lines.count) }
            }
            guard let end = w.end else { return .stillHeld }
            let record = try store.transition(id, to: end.status) { end.apply(&$0) }
            held.withLock { $0[id] = nil }
            return .stored(record)
        } catch where StorageHealth.isStorageFailure(error) {
            storageFailed("\(error)")
            return .stillHeld
        } catch {
            logger.error("giving up a held write of workload \(id): \(error)")
            held.withLock { $0[id] = nil }
            return .stillHeld
        }
    }

    /// Cluster mode: a database that cannot be reached for now (`StoreError.unavailable`) is
    /// waited for, on the writer, with backoff: the workloads' readers then stop at the
    /// backlog bound and their pipes fill, as under backpressure, and nothing read is lost.
    /// Past `outageWait`, or once the server is stopping, the error goes to the caller
    /// (which holds the write, as for any storage failure). A single server's SQLite errors
    /// are never retried here: a full disk does not heal by waiting.
    func retryingOutage(_ write: () throws -> Void) throws {
        var delay = 0.1
        let deadline = Date().addingTimeInterval(Engine.outageWait)
        while true {
            do {
                try write()
                return
            } catch where cluster != nil && StorageHealth.isOutage(error) {
                storageFailed("\(error)")
                lock.lock()
                let stopping = shuttingDown
                lock.unlock()
                if stopping || Date() > deadline { throw error }
                Thread.sleep(forTimeInterval: delay)
                delay = min(2, delay * 2)
            }
        }
    }

    static let outageWait: TimeInterval = 120

    func storageFailed(_ cause: String) {
        if health.failed(cause) { logger.error("the store refuses writes: \(cause)") }
        scheduleRepair()
    }

    /// At most one repair pass is scheduled at a time.
    func scheduleRepair() {
        guard repairScheduled.withLock({ s in defer { s = true }; return !s }) else { return }
        storeWriter.asyncAfter(Engine.repairInterval, Engine.repairKey) { [self] in
            repairScheduled.withLock { $0 = false }
            repair()
        }
    }

    static let repairInterval: DispatchTimeInterval = .milliseconds(500)
    /// The repair pass's turn on the writer (no workload id is empty).
    static let repairKey = ""

    /// One repair pass: every held write in id order, then a probe write; the store is
    /// healthy again only when all of them went through. Otherwise the next pass is scheduled.
    func repair() {
        let ids = held.withLock { h in h.filter(\.value.owesWrites).keys.sorted() }
        for id in ids {
            if case .stored(let record) = flushHeld(id) {
                logger.notice("stored the held end of workload \(id): \(record.status.rawValue)")
            }
        }
        let owed = held.withLock { h in h.values.contains(where: \.owesWrites) }
        if owed {
            scheduleRepair()
            return
        }
        do {
            try store.checkWritable()
            if health.recovered() { logger.notice("the store accepts writes again") }
        } catch {
            storageFailed("\(error)")
        }
    }
}
