import Foundation
import Testing
import KilnCore
@testable import KilnEngine

/// The store's writer keeps each workload's order and takes workloads in turn, so a small
/// workload's writes do not wait behind everything a flood has queued.
@Suite(.timeLimit(.minutes(2)), .ownThread) struct FairWriterTests {
    /// The order writes ran in: a first "flood" write holds the writer while `floods - 1`
    /// more flood writes and then `queue`'s are queued (so every turn is decided by then).
    func runOrder(floods: Int, then queue: (FairWriter, @escaping @Sendable (String) -> Void) -> Void) -> [String] {
        let writer = FairWriter()
        let order = Locked<[String]>([])
        let record: @Sendable (String) -> Void = { name in order.withLock { $0.append(name) } }
        let gate = DispatchSemaphore(value: 0)
        let running = DispatchSemaphore(value: 0)
        writer.async("flood") { running.signal(); gate.wait(); record("flood-0") }
        running.wait()
        for i in 1..<floods { writer.async("flood") { record("flood-\(i)") } }
        queue(writer, record)
        gate.signal()
        writer.waitUntilIdle()
        return order.withLock { $0 }
    }

    @Test func workloadsTakeTurnsAndKeepTheirOwnOrder() {
        let ran = runOrder(floods: 100) { writer, record in
            writer.async("small") { record("small-batch") }
            writer.async("small") { record("small-end") }
            writer.async("other") { record("other") }
        }
        #expect(ran.count == 103)
        #expect(ran.filter { $0.hasPrefix("flood") } == (0..<100).map { "flood-\($0)" })
        let smallEnd = ran.firstIndex(of: "small-end") ?? 999
        #expect(ran.firstIndex(of: "small-batch")! < smallEnd)
        // flood-0 (running while the rest queued), flood-1, small-batch, other, flood-2,
        // small-end: three flood writes before it, not 100.
        #expect(smallEnd == 5, "\(ran.prefix(8))")
        #expect((ran.firstIndex(of: "other") ?? 999) <= 3)
    }

    /// An urgent write (a terminal status, a last batch) puts its workload first: it waits
    /// only for the write in progress.
    @Test func urgentWritesGoFirst() {
        let ran = runOrder(floods: 50) { writer, record in
            writer.async("other") { record("other") }
            writer.async("done", urgent: true) { record("done-batch") }
            writer.async("done", urgent: true) { record("done-end") }
        }
        #expect(Array(ran.prefix(3)) == ["flood-0", "done-batch", "done-end"], "\(ran.prefix(6))")
        #expect(ran.filter { $0.hasPrefix("flood") } == (0..<50).map { "flood-\($0)" })
    }

    @Test func waitUntilIdleWaitsForWritesQueuedByWrites() {
        let writer = FairWriter()
        let done = Locked(0)
        writer.async("a") {
            usleep(20_000)
            writer.async("b") { done.withLock { $0 += 1 } }
            done.withLock { $0 += 1 }
        }
        writer.waitUntilIdle()
        #expect(done.withLock { $0 } == 2)
    }
}
