import Foundation
import Testing
import KilnCore
@testable import KilnEngine

/// The store's writer keeps each workload's order and takes workloads in turn, so a small
/// workload's writes do not wait behind everything a flood has queued.
@Suite(.timeLimit(.minutes(2)), .ownThread) struct FairWriterTests {
    @Test func workloadsTakeTurnsAndKeepTheirOwnOrder() {
        let writer = FairWriter()
        let order = Locked<[String]>([])
        let gate = DispatchSemaphore(value: 0)
        let running = DispatchSemaphore(value: 0)
        // The first write holds the writer, running, until everything below is queued.
        writer.async("flood") { running.signal(); gate.wait(); order.withLock { $0.append("flood-0") } }
        running.wait()
        for i in 1..<100 { writer.async("flood") { order.withLock { $0.append("flood-\(i)") } } }
        writer.async("small") { order.withLock { $0.append("small-batch") } }
        writer.async("small") { order.withLock { $0.append("small-end") } }
        writer.async("other") { order.withLock { $0.append("other") } }
        gate.signal()
        writer.waitUntilIdle()
        let ran = order.withLock { $0 }
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
        let writer = FairWriter()
        let order = Locked<[String]>([])
        let gate = DispatchSemaphore(value: 0)
        let running = DispatchSemaphore(value: 0)
        writer.async("flood") { running.signal(); gate.wait(); order.withLock { $0.append("flood-0") } }
        running.wait()
        for i in 1..<50 { writer.async("flood") { order.withLock { $0.append("flood-\(i)") } } }
        writer.async("other") { order.withLock { $0.append("other") } }
        writer.async("done", urgent: true) { order.withLock { $0.append("done-batch") } }
        writer.async("done", urgent: true) { order.withLock { $0.append("done-end") } }
        gate.signal()
        writer.waitUntilIdle()
        let ran = order.withLock { $0 }
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
