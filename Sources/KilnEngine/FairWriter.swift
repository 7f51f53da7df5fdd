import Dispatch
import Foundation
import KilnCore

/// The store's writer: one thread that runs store writes one at a time, in order per
/// workload, and takes workloads in turn. A workload's writes (its log batches, then its
/// terminal status) keep their order; between workloads, each one with work waiting runs
/// one write, then goes to the back. So a trivial workload's one batch and its end wait
/// for at most one batch of each flooding workload, not for everything a flood has queued
/// (it waited behind up to 4 MiB of another workload's lines: `echo hi` took 29 times as
/// long during a flood, B6). An `urgent` write (a terminal status, a workload's last
/// batch) puts its workload at the front of the turns, so a finishing workload's answer
/// waits for the one write in progress, not for a turn of every flood. Written by hand: a serial DispatchQueue is FIFO across every
/// workload, and a pool of queues would let two writes contend for SQLite's one writer.
final class FairWriter: Sendable {
    private struct Write {
        var urgent: Bool
        var run: @Sendable () -> Void
    }
    private struct State {
        var lanes: [String: [Write]] = [:]
        /// Workloads with writes waiting, in turn order.
        var turns: [String] = []
        var draining = false
    }
    // `state` is changed only while `idle` is held, so `waitUntilIdle` never misses the
    // broadcast that ends its wait; `Locked` makes that state checked Sendable.
    private let idle = NSCondition()
    private let state = Locked(State())
    private let queue = DispatchQueue(label: "kiln.store-writer")

    /// Queues `work` behind `key`'s earlier writes.
    func async(_ key: String, urgent: Bool = false, _ work: @escaping @Sendable () -> Void) {
        idle.lock()
        let start = state.withLock { s -> Bool in
            if s.lanes[key] == nil {
                if urgent { s.turns.insert(key, at: 0) } else { s.turns.append(key) }
            }
            s.lanes[key, default: []].append(Write(urgent: urgent, run: work))
            defer { s.draining = true }
            return !s.draining
        }
        idle.unlock()
        if start { queue.async { [self] in drain() } }
    }

    /// Queues `work` after `delay`.
    func asyncAfter(_ delay: DispatchTimeInterval, _ key: String, _ work: @escaping @Sendable () -> Void) {
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [self] in async(key, work) }
    }

    /// Waits until every write queued so far (and any they queue) has run.
    func waitUntilIdle() {
        idle.lock()
        while state.withLock({ $0.draining }) { idle.wait() }
        idle.unlock()
    }

    private func drain() {
        while let work = next() { work() }
    }

    /// The next workload's next write; nil (and no longer draining) when nothing waits.
    private func next() -> (@Sendable () -> Void)? {
        idle.lock()
        defer { idle.unlock() }
        let work = state.withLock { s -> (@Sendable () -> Void)? in
            guard !s.turns.isEmpty else {
                s.draining = false
                return nil
            }
            let key = s.turns.removeFirst()
            var lane = s.lanes[key] ?? []
            let first = lane.removeFirst()
            if lane.isEmpty {
                s.lanes[key] = nil
            } else {
                s.lanes[key] = lane
                if lane[0].urgent { s.turns.insert(key, at: 0) } else { s.turns.append(key) }
            }
            return first.run
        }
        if work == nil { idle.broadcast() }
        return work
    }
}
