import Foundation
import KilnCore

/// Log lines handed to the store and not stored yet, bounded per workload and in total.
///
/// A workload's lines are read on its own lane thread, which hands each batch to the
/// store's writer. Before, nothing slowed that thread down: 20,000,000 lines took the
/// server from 54 MB to 3.39 GB while the store caught up. Now handing a batch over waits
/// while the workload (or the server) has too much unstored, so the thread stops reading
/// the workload's pipes and the workload's own writes block: the kernel's pipe buffer is
/// the only buffer that grows with a fast printer. One flooding workload holds at most
/// `perWorkload` bytes of the writer's work; the writer takes workloads in turn
/// (`FairWriter`), so the others' lines and final states wait for one of its batches at most.
final class StoreBacklog: Sendable {
    /// What a line costs here besides its text (the LogLine and array slot).
    static let lineOverhead = 64
    let perWorkload: Int
    let total: Int

    private struct State {
        var bytes: [String: Int] = [:]
        var total = 0
    }
    // `state` is read and written only while `condition` is held, so a waiter never misses
    // the release it waits for; `Locked` makes that state checked Sendable.
    private let condition = NSCondition()
    private let state = Locked(State())

    init(perWorkload: Int = 4 << 20, total: Int = 32 << 20) {
        self.perWorkload = perWorkload
        self.total = total
    }

    static func cost(_ lines: [LogLine]) -> Int {
        lines.reduce(0) { $0 + $1.line.utf8.count + lineOverhead }
    }

    /// Waits until `bytes` more of `id` fit, then counts them. A batch always fits when the
    /// workload (or the server) has nothing unstored, so one larger than a bound still goes.
    func admit(_ id: String, bytes: Int) {
        condition.lock()
        defer { condition.unlock() }
        while !state.withLock({ s in Self.fits(s, id, bytes, perWorkload, total) }) {
            condition.wait()
        }
        state.withLock { s in
            s.bytes[id, default: 0] += bytes
            s.total += bytes
        }
    }

    /// The batch is stored (or given up on): its bytes no longer count.
    func release(_ id: String, bytes: Int) {
        condition.lock()
        state.withLock { s in
            let left = (s.bytes[id] ?? 0) - bytes
            s.bytes[id] = left > 0 ? left : nil
            s.total = max(0, s.total - bytes)
        }
        condition.broadcast()
        condition.unlock()
    }

    /// Bytes not stored yet: of one workload, or (nil) of all.
    func unstored(_ id: String? = nil) -> Int {
        condition.lock()
        defer { condition.unlock() }
        return state.withLock { s in id.map { s.bytes[$0] ?? 0 } ?? s.total }
    }

    private static func fits(_ s: State, _ id: String, _ bytes: Int, _ perWorkload: Int, _ total: Int) -> Bool {
        let mine = s.bytes[id] ?? 0
        let workloadFits = mine == 0 || mine + bytes <= perWorkload
        let serverFits = s.total == 0 || s.total + bytes <= total
        return workloadFits && serverFits
    }
}
