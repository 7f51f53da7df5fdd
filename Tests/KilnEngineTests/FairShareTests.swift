import Foundation
import Testing
import KilnCore
import KilnTestSupport
@testable import KilnEngine

/// Fair share between tenants (`KILN_TENANT_MAX_CONCURRENT`): the pick itself, then real
/// workloads on the engine, each held until the test releases it.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct FairShareTests {
    @Test func aFreeSlotGoesToTheOldestPendingOfTheTenantWithTheFewestRunning() {
        var q = FairQueue<String>(tenantLimit: 2)
        q.started("a")
        q.started("a")
        q.started("b")
        for (item, tenant) in [("a3", "a"), ("a4", "a"), ("b2", "b"), ("b3", "b"), ("c1", "c")] { q.enqueue(item, tenant: tenant) }
        // c runs none, b one, a two (its limit).
        #expect(q.next() == "c1")
        #expect(q.next() == "b2")
        // b and c... b now runs two, a two, c one: nothing of a or b may start.
        #expect(q.next() == nil)
        q.finished("a")
        #expect(q.next() == "a3")
        q.finished("b")
        q.finished("b")
        #expect(q.next() == "b3")
        #expect(q.remove { $0 == "a4" })
        #expect(q.isEmpty)
        #expect(!q.remove { $0 == "a4" })
    }

    /// A workload that runs until `release(name)`.
    struct Gate {
        let folder = NSTemporaryDirectory() + "kiln-fair-\(UUID().uuidString.prefix(8))"
        init() { try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
        func code(_ name: String) -> String { "while [ ! -e \(folder)/\(name) ]; do sleep 0.02; done; echo \(name)" }
        func release(_ name: String) { #expect(FileManager.default.createFile(atPath: "\(folder)/\(name)", contents: nil)) }
    }

    func waitFor(_ h: EngineHarness, _ id: String, _ status: WorkloadStatus) throws {
        let deadline = Date().addingTimeInterval(30)
        while true {
            let now = try h.store.get(id)?.status
            if now == status { return }
            try #require(Date() < deadline, "\(id) did not become \(status) within 30 s (is \(String(describing: now)))")
            usleep(10_000)
        }
    }

    @Test func oneTenantsBacklogDoesNotStarveAnother() throws {
        let h = try EngineHarness(maxConcurrent: 2)
        let gate = Gate()
        let a = try (1...4).map { try h.engine.submit(h.request(.shell, gate.code("a\($0)"), tenant: "a")).id }
        let b = try h.engine.submit(h.request(.shell, gate.code("b1"), tenant: "b")).id
        try waitFor(h, a[0], .running)
        try waitFor(h, a[1], .running)
        #expect(try h.store.get(b)?.status == .pending)
        // a's older pending workloads came first, but a runs one and b none: b gets the slot.
        gate.release("a1")
        try waitFor(h, a[0], .completed)
        try waitFor(h, b, .running)
        #expect(try h.store.get(a[2])?.status == .pending)
        for name in ["a2", "a3", "a4", "b1"] { gate.release(name) }
        for id in a + [b] { try waitFor(h, id, .completed) }
    }

    @Test func aTenantAtItsLimitWaitsWhileOthersRun() throws {
        let h = try EngineHarness(maxConcurrent: 4, tenantMaxConcurrent: 1)
        let gate = Gate()
        let a1 = try h.engine.submit(h.request(.shell, gate.code("a1"), tenant: "a")).id
        let a2 = try h.engine.submit(h.request(.shell, gate.code("a2"), tenant: "a")).id
        let b1 = try h.engine.submit(h.request(.shell, gate.code("b1"), tenant: "b")).id
        try waitFor(h, a1, .running)
        try waitFor(h, b1, .running)
        // Slots are free, but a is at its limit.
        #expect(try h.store.get(a2)?.status == .pending)
        #expect(h.engine.counts.queued == 1)
        gate.release("a1")
        try waitFor(h, a2, .running)
        gate.release("a2")
        gate.release("b1")
        for id in [a1, a2, b1] { try waitFor(h, id, .completed) }
    }
}
