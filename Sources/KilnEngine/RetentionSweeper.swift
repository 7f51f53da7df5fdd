import Dispatch
import Foundation
import KilnCore
import KilnStore
import Logging

/// Retention (`KILN_RETENTION`): deletes workloads that finished longer ago than the
/// retention, with their logs, in a sweep on a queue of its own (a batch of records at a
/// time, each log in short transactions), so requests never wait for it.
public final class RetentionSweeper: Sendable {
    private let store: any WorkloadStore
    private let retentionMs: Int64
    private let logger: Logger
    private let queue = DispatchQueue(label: "kiln.retention")
    private let timer: Locked<DispatchSourceTimer?> = Locked(nil)

    /// Records deleted per batch; a sweep runs batches until one comes back short.
    static let batch = 200

    public init(store: any WorkloadStore, retentionSeconds: Int, logger: Logger) {
        self.store = store
        self.retentionMs = Int64(retentionSeconds) * 1000
        self.logger = logger
    }

    /// How often it sweeps: a tenth of the retention, from 1 s to 1 min.
    public var interval: TimeInterval { min(60, max(1, Double(retentionMs) / 10_000)) }

    /// Sweeps now, then every `interval`.
    public func start() {
        let source = DispatchSource.makeTimerSource(queue: queue)
        source.schedule(deadline: .now(), repeating: interval)
        source.setEventHandler { [self] in sweep() }
        timer.withLock { $0 = source }
        source.resume()
    }

    public func stop() {
        timer.withLock { $0?.cancel(); $0 = nil }
        queue.sync {}
    }

    /// Returns the freed pages to the file system, 4 MiB at a time, so that writers wait
    /// at most one short step behind it.
    func reclaim() {
        var bytes = 0
        do {
            while true {
                let step = try store.reclaimSpace(maxPages: 1024)
                bytes += step
                if step == 0 { break }
            }
        } catch {
            logger.error("retention: cannot reclaim free space: \(error)")
        }
        if bytes > 0 { logger.info("retention: gave \(bytes >> 20) MiB back to the file system") }
    }

    /// One sweep; how many workloads it deleted.
    @discardableResult
    public func sweep(now: Int64 = Millis.now()) -> Int {
        var total = 0
        do {
            while true {
                let n = try store.purgeFinished(before: now - retentionMs, limit: RetentionSweeper.batch, chunk: 10_000)
                total += n
                if n < RetentionSweeper.batch { break }
            }
        } catch {
            logger.error("retention sweep failed: \(error)")
        }
        if total > 0 {
            logger.info("retention: deleted \(total) finished workloads")
            reclaim()
        }
        return total
    }
}
