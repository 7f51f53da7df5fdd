import Dispatch
import Synchronization

/// A fixed number of serial queues that requests touching the store run on, taken in
/// turn: at most `count` threads block on SQLite at once, whatever the number of requests.
final class StoreWorkers: Sendable {
    private let queues: [DispatchQueue]
    private let next = Atomic<Int>(0)

    init(count: Int, label: String = "kiln.store-requests") {
        queues = (0..<max(1, count)).map { DispatchQueue(label: "\(label).\($0)") }
    }

    func async(_ work: @escaping @Sendable () -> Void) {
        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
        queues[Int(UInt(bitPattern: i) % UInt(queues.count))].async(execute: work)
    }

    /// Returns once everything queued before the call has run.
    func drain() {
        for q in queues { q.sync {} }
    }
}
