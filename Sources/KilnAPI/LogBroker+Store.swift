import KilnCore
import KilnLogs
import KilnStore

extension LogBroker {
    /// A broker that catches up from `store`: its lines, and the end of a finished workload
    /// from its terminal record.
    public static func backed(by store: any WorkloadStore, frame: LogFrameEncoder? = KilnAPI.textFrame) -> LogBroker {
        LogBroker(history: { id, after, limit in try store.lines(id, after: after, limit: limit) },
                  ending: { id in try store.get(id).flatMap { $0.status.isTerminal ? EndInfo(record: $0) : nil } },
                  frame: frame)
    }
}
