import KilnCore
import KilnLogs
import KilnStore

extension LogBroker {
    /// A broker that catches up from `store`: its lines, and the end of a finished workload
    /// from its terminal record. Those reads run on store queues of their own, so a stream
    /// catching up never blocks the HTTP daemon's threads on SQLite.
    public static func backed(by store: any WorkloadStore, frame: LogFrameEncoder? = KilnAPI.textFrame) -> LogBroker {
        let reads = StoreWorkers(count: 2, label: "kiln.log-catch-up")
        return LogBroker(history: { id, after, limit in try store.lines(id, after: after, limit: limit) },
                         ending: { id in try store.get(id).flatMap { $0.status.isTerminal ? EndInfo(record: $0) : nil } },
                         frame: frame, storeReads: { reads.async($0) })
    }
}
