import Foundation
import KilnCore
import KilnPostgres
import KilnStore
import KilnTestSupport
import Logging
import Synchronization
import Testing

/// The PostgreSQL store against a real server started for the suite (`PostgresServer`).
@Suite(.serialized, .ownThread)
final class PostgresStoreTests {
    let server: PostgresServer
    let store: PostgresStore

    init() throws {
        server = try PostgresServer()
        store = try PostgresStore(url: try PostgresURL(server.url), logger: Logger(label: "test"))
    }

    deinit {
        store.close()
        server.stop()
    }

    static func record(_ id: String, tenant: String = "default", isolation: Isolation = .auto, runtime: Runtime = .shell) -> WorkloadRecord {
        WorkloadRecord(id: id, status: .pending, runtime: runtime, isolation: isolation,
                       resources: Resources(cpus: 1, memMB: 64, timeoutS: 10), createdAt: Millis.now(), tenant: tenant)
    }

    static let spec = StoredSpec(code: "echo hi", inputJSON: "{\"a\":1}", env: ["K": "v"], isolationLimit: [.sandbox, .process])

    @Test func theStateMachineHoldsInTheDatabase() throws {
        try store.insert(Self.record("01SM"))
        let running = try store.transition("01SM", to: .running) { $0.startedAt = 5; $0.isolationUsed = .process }
        #expect(running.status == .running)
        #expect(throws: StoreError.invalidTransition(id: "01SM", from: .running, to: .pending)) {
            try self.store.transition("01SM", to: .pending)
        }
        let done = try store.transition("01SM", to: .completed) { $0.exitCode = 0; $0.outputJSON = "{\"ok\":true}"; $0.finishedAt = 9 }
        let read = try #require(try store.get("01SM"))
        #expect(read == done)
        #expect(read.isolationUsed == .process && read.startedAt == 5)
        #expect(throws: StoreError.notFound("nope")) { try self.store.transition("nope", to: .running) }
    }

    @Test func linesKeepNulCrAndOrderAndPage() throws {
        try store.insert(Self.record("01LN"))
        var lines: [LogLine] = []
        for i in 1...600 {
            let stream: LogStream = i % 2 == 0 ? .stderr : .stdout
            lines.append(LogLine(seq: Int64(i), stream: stream, ts: Int64(1000 + i), line: "l\(i)"))
        }
        lines.append(LogLine(seq: 601, stream: .stdout, ts: 7, line: "nul\u{0}hidden\rcr é"))
        try store.appendLines("01LN", Array(lines.prefix(300)))
        try store.appendLines("01LN", Array(lines.dropFirst(300)))
        #expect(try store.maxSeq("01LN") == 601)
        #expect(try store.lines("01LN", after: 0, limit: 1000) == lines)
        #expect(try store.lines("01LN", after: 599, limit: 1) == [lines[599]])
        #expect(try store.seqBeforeLast("01LN", count: 10) == 591)
        // A batch sent again (a retry after a timeout whose write had in fact committed)
        // changes nothing: a stored line is never rewritten.
        var again = lines[0]
        again.line = "rewritten"
        try store.appendLines("01LN", [again])
        #expect(try store.lines("01LN", after: 0, limit: 1) == [lines[0]])
        #expect(try store.maxSeq("01LN") == 601)
    }

    @Test func listFiltersAndPagesNewestFirst() throws {
        for i in 0..<5 { try store.insert(Self.record("02L\(i)", tenant: i % 2 == 0 ? "a" : "b")) }
        let page1 = try store.list(limit: 2, cursor: nil, filter: WorkloadFilter(tenant: "a"))
        #expect(page1.records.map(\.id) == ["02L4", "02L2"])
        let page2 = try store.list(limit: 2, cursor: page1.nextCursor, filter: WorkloadFilter(tenant: "a"))
        #expect(page2.records.map(\.id) == ["02L0"] && page2.nextCursor == nil)
        #expect(try store.list(limit: 10, cursor: nil, filter: WorkloadFilter(status: .running, tenant: "a")).records.isEmpty)
    }

    @Test func purgeRefusesUnfinishedAndDeletesLines() throws {
        try store.insert(Self.record("03P"))
        try store.appendLines("03P", [LogLine(seq: 1, stream: .stdout, ts: 1, line: "x")])
        #expect(throws: StoreError.notFinished("03P")) { try self.store.purge("03P") }
        try store.transition("03P", to: .killed)
        #expect(try store.purge("03P"))
        #expect(try store.get("03P") == nil)
        #expect(try store.lines("03P", after: 0, limit: 10).isEmpty)
        #expect(try store.purge("03P") == false)
    }

    /// Two workers claiming at once from 200 pending workloads: each claimed exactly once.
    @Test func concurrentClaimsNeverTakeTheSameWorkload() throws {
        for i in 0..<200 { try store.insertPending(Self.record(String(format: "04C%03d", i)), spec: Self.spec) }
        let claimed = Mutex<[String: String]>([:])
        let duplicates = Mutex(0)
        let store = self.store
        DispatchQueue.concurrentPerform(iterations: 2) { w in
            let node = "w\(w)"
            while true {
                guard let got = try? store.claim(node: node, limit: 7, explicit: [], autoRuntimes: [.shell], tenantLimit: 1000,
                                                 resolve: { _, _ in .process }), !got.isEmpty else { break }
                claimed.withLock { c in
                    for g in got {
                        if c[g.record.id] != nil { duplicates.withLock { $0 += 1 } }
                        c[g.record.id] = node
                    }
                }
            }
        }
        #expect(duplicates.withLock { $0 } == 0)
        #expect(claimed.withLock { $0.count } == 200)
        let one = try #require(try store.get("04C000"))
        #expect(one.status == .running && one.isolationUsed == .process && one.startedAt != nil)
        #expect(try store.pendingCount() == 0)
    }

    @Test func claimsRespectIsolationTenantShareAndCarryTheSpec() throws {
        try store.insertPending(Self.record("05A", isolation: .gvisor), spec: Self.spec)
        try store.insertPending(Self.record("05B", tenant: "t"), spec: Self.spec)
        try store.insertPending(Self.record("05C", tenant: "t"), spec: Self.spec)
        let got = try store.claim(node: "n", limit: 10, explicit: [.sandbox], autoRuntimes: [.shell], tenantLimit: 1,
                                  resolve: { _, _ in .sandbox })
        #expect(got.map(\.record.id) == ["05B"])
        #expect(got.first?.spec == Self.spec)
        let nothing = try store.claim(node: "n", limit: 10, explicit: [], autoRuntimes: [.shell], tenantLimit: 1,
                                      resolve: { _, _ in nil })
        #expect(nothing.isEmpty)
        #expect(try store.get("05A")?.status == .pending)
        #expect(try store.get("05C")?.status == .pending)
    }

    @Test func lostNodesFailTheirRunningWorkloads() throws {
        try store.renewLease(NodeRecord(name: "dead", role: "worker", state: "live", capacity: 4, running: 1, leaseAt: 1000,
                                        startedAt: 1000, backends: ["process"]))
        try store.renewLease(NodeRecord(name: "me", role: "all", state: "live", capacity: 4, running: 0, leaseAt: Millis.now(),
                                        startedAt: 1000, backends: ["process"]))
        try store.insertPending(Self.record("06N"), spec: Self.spec)
        _ = try store.claim(node: "dead", limit: 1, explicit: [], autoRuntimes: [.shell], tenantLimit: 9, resolve: { _, _ in .process })
        try store.appendLines("06N", [LogLine(seq: 1, stream: .stdout, ts: 1, line: "a"), LogLine(seq: 2, stream: .stdout, ts: 2, line: "b")])
        let failed = try store.failLostNodes(leaseBefore: Millis.now() - 10_000, except: "me", at: Millis.now())
        #expect(failed == ["06N"])
        let r = try #require(try store.get("06N"))
        #expect(r.status == .failed && r.error == "node lost" && r.logLines == 2)
        let nodes = try store.nodes()
        #expect(nodes.map(\.name) == ["dead", "me"])
        #expect(nodes.first?.state == "lost" && nodes.last?.state == "live")
    }

    /// Stored batches, ends, kills and submissions are announced, and only after commit.
    @Test func announcementsArriveForLinesEndsKillsAndWork() throws {
        let heard = Mutex<[ClusterSignal]>([])
        let connected = DispatchSemaphore(value: 0)
        store.listen { s in
            if s == .connected { connected.signal() } else { heard.withLock { $0.append(s) } }
        }
        #expect(connected.wait(timeout: .now() + 10) == .success)
        try store.insertPending(Self.record("07S"), spec: Self.spec)
        try store.transition("07S", to: .running)
        try store.appendLines("07S", [LogLine(seq: 1, stream: .stdout, ts: 1, line: "x")])
        try store.announceKill("07S")
        try store.transition("07S", to: .killed)
        let want: [ClusterSignal] = [.work, .logs(id: "07S", seq: 1), .kill(id: "07S"), .ended(id: "07S")]
        let deadline = Date().addingTimeInterval(10)
        while heard.withLock({ $0.count }) < want.count && Date() < deadline { usleep(20_000) }
        #expect(heard.withLock { $0 } == want)
    }

    @Test func theURLsPasswordNeverShows() throws {
        let url = try PostgresURL(server.url)
        #expect(!url.redacted.contains(server.password))
        #expect(url.redacted.contains("***"))
        // A refused connection names the address without its password.
        let bad = try PostgresURL("postgres://kiln:\(server.password)@127.0.0.1:1/kiln")
        do {
            _ = try PostgresStore(url: bad, logger: Logger(label: "test"))
            Issue.record("connected to port 1")
        } catch {
            #expect(!"\(error)".contains(server.password))
            #expect("\(error)".contains("127.0.0.1:1"))
        }
        #expect(throws: (any Error).self) { try PostgresURL("mysql://x@y/z") }
    }
}
