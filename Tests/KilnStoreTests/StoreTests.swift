import Foundation
import KilnTestSupport
import Testing
import KilnCore
@testable import KilnStore

@Suite(.timeLimit(.minutes(10)), .ownThread) struct StoreTests {
    let ids = ULIDGenerator()

    func record(_ status: WorkloadStatus = .pending, runtime: Runtime = .shell) -> WorkloadRecord {
        WorkloadRecord(id: ids.next(), status: status, runtime: runtime, isolation: .auto,
                       resources: Resources(cpus: 1, memMB: 256, timeoutS: 30), createdAt: Millis.now())
    }

    func path() -> String {
        NSTemporaryDirectory() + "kiln-store-\(UUID().uuidString)/sub/kiln.db"
    }

    @Test func aLineWithNulAndInvalidBytesComesBackAsItWasStored() throws {
        let store = try SQLiteStore(path: path())
        let r = record(.running)
        try store.insert(r)
        let lines = [LogLine(seq: 1, stream: .stdout, ts: 1, line: "nul\u{0}hidden"), LogLine(seq: 2, stream: .stderr, ts: 2, line: "\u{0}"),
                     LogLine(seq: 3, stream: .stdout, ts: 3, line: "caf\u{e9} \u{fffd} end")]
        try store.appendLines(r.id, lines)
        #expect(try store.lines(r.id, after: 0, limit: 10) == lines)
    }

    /// Puts a record in `status` by allowed moves from pending.
    func make(_ store: SQLiteStore, _ status: WorkloadStatus) throws -> String {
        let r = record()
        try store.insert(r)
        switch status {
        case .pending: break
        case .running: try store.transition(r.id, to: .running)
        case .completed, .failed, .killed:
            try store.transition(r.id, to: .running)
            try store.transition(r.id, to: status)
        }
        return r.id
    }

    /// Retention deletes what finished before the cutoff, with its log, in batches of
    /// `limit`, and never a pending or running workload or a newer finished one.
    @Test func purgeFinishedDeletesOnlyWhatFinishedBeforeTheCutoff() throws {
        let store = try SQLiteStore(path: path())
        func finished(_ status: WorkloadStatus, at: Int64, lines: Int) throws -> String {
            let r = record()
            try store.insert(r)
            try store.transition(r.id, to: .running)
            try store.transition(r.id, to: status) { $0.finishedAt = at }
            try store.appendLines(r.id, (1...lines).map { LogLine(seq: Int64($0), stream: .stdout, ts: 0, line: "l\($0)") })
            return r.id
        }
        let old = try [finished(.completed, at: 1_000, lines: 25), finished(.failed, at: 2_000, lines: 3),
                       finished(.killed, at: 3_000, lines: 1)]
        let recent = try finished(.completed, at: 9_000, lines: 2)
        let running = try make(store, .running)
        try store.appendLines(running, [LogLine(seq: 1, stream: .stdout, ts: 0, line: "still here")])
        let pending = try make(store, .pending)
        // Two per batch, lines in chunks of 10: the first batch takes the two oldest.
        #expect(try store.purgeFinished(before: 5_000, limit: 2, chunk: 10) == 2)
        #expect(try store.get(old[0]) == nil && store.get(old[1]) == nil)
        #expect(try store.lines(old[0], after: 0, limit: 100).isEmpty)
        #expect(try store.get(old[2]) != nil)
        #expect(try store.purgeFinished(before: 5_000, limit: 2, chunk: 10) == 1)
        #expect(try store.purgeFinished(before: 5_000, limit: 2, chunk: 10) == 0)
        #expect(try store.get(old[2]) == nil)
        #expect(try store.get(recent)?.status == .completed && store.lines(recent, after: 0, limit: 10).count == 2)
        #expect(try store.get(running)?.status == .running && store.lines(running, after: 0, limit: 10).count == 1)
        #expect(try store.get(pending)?.status == .pending)
    }

    @Test func everyTransitionIsAllowedOrRefusedAsTheStateMachineSays() throws {
        let store = try SQLiteStore(path: ":memory:")
        for from in WorkloadStatus.allCases {
            for to in WorkloadStatus.allCases {
                let id = try make(store, from)
                if from.canMove(to: to) {
                    let r = try store.transition(id, to: to)
                    #expect(r.status == to)
                    #expect(try store.get(id)?.status == to)
                } else {
                    #expect(throws: StoreError.invalidTransition(id: id, from: from, to: to)) {
                        try store.transition(id, to: to)
                    }
                    #expect(try store.get(id)?.status == from)
                }
            }
        }
    }

    @Test func createsTheFolderAndUsesWAL() throws {
        let p = path()
        let store = try SQLiteStore(path: p)
        try store.insert(record())
        #expect(FileManager.default.fileExists(atPath: p))
        #expect(FileManager.default.fileExists(atPath: p + "-wal"))
    }

    @Test func reopensWithMigrationsApplied() throws {
        let p = path()
        let id: String
        do {
            let store = try SQLiteStore(path: p)
            id = try make(store, .running)
        }
        let again = try SQLiteStore(path: p)
        #expect(try again.get(id)?.status == .running)
    }

    /// A database of the first schema (lines in a rowid table with an index) is moved to
    /// the clustered table when it is opened, lines and all.
    @Test func linesSurviveTheMoveToTheClusteredTable() throws {
        let p = path()
        let id: String
        do {
            let old = try SQLiteStore(path: p, migrateUpTo: "v1-log-lines")
            id = ULIDGenerator().next()
            // A row as the first schema stored it (the current insert names later columns).
            try old.executeForTesting("""
                INSERT INTO workloads (id, status, runtime, isolation, cpus, mem_mb, timeout_s, created_at)
                VALUES ('\(id)', 'completed', 'shell', 'auto', 1, 256, 30, 1)
                """)
            try old.appendLines(id, (1...300).map { LogLine(seq: Int64($0), stream: $0 % 2 == 0 ? .stderr : .stdout, ts: Int64($0), line: "line \($0)") })
        }
        let store = try SQLiteStore(path: p)
        let lines = try store.lines(id, after: 0, limit: 1000)
        #expect(lines.map(\.seq) == (1...300).map { Int64($0) })
        #expect(lines[1] == LogLine(seq: 2, stream: .stderr, ts: 2, line: "line 2"))
        #expect(try store.maxSeq(id) == 300)
        // Still one line per seq.
        #expect(throws: (any Error).self) { try store.appendLines(id, [LogLine(seq: 5, stream: .stdout, ts: 0, line: "again")]) }
        // Workloads stored before tenants existed belong to `default`.
        #expect(try store.get(id)?.tenant == "default")
        #expect(try store.list(limit: 10, cursor: nil, filter: WorkloadFilter(tenant: "default")).records.map(\.id) == [id])
        #expect(try store.list(limit: 10, cursor: nil, filter: WorkloadFilter(tenant: "team-a")).records.isEmpty)
    }

    @Test func tenantsScopeListsAndStats() throws {
        let store = try SQLiteStore(path: ":memory:")
        var a = record()
        a.tenant = "team-a"
        try store.insert(a)
        var b = record()
        b.tenant = "team-b"
        try store.insert(b)
        try store.insert(record())
        #expect(try store.get(a.id)?.tenant == "team-a")
        #expect(try store.list(limit: 10, cursor: nil, filter: WorkloadFilter(tenant: "team-b")).records.map(\.id) == [b.id])
        #expect(try store.list(limit: 10, cursor: nil, filter: WorkloadFilter()).records.count == 3)
        #expect(try store.stats(tenant: "team-a").total == 1)
        #expect(try store.stats(tenant: "nobody").total == 0)
        #expect(try store.stats().total == 3)
        // A transition keeps the tenant.
        #expect(try store.transition(a.id, to: .running).tenant == "team-a")
        #expect(try store.get(a.id)?.tenant == "team-a")
    }

    @Test func transitionAppliesTheChange() throws {
        let store = try SQLiteStore(path: ":memory:")
        let id = try make(store, .running)
        let r = try store.transition(id, to: .completed) { r in
            r.exitCode = 0
            r.outputJSON = #"{"sum":3}"#
            r.logLines = 2
        }
        #expect(r.exitCode == 0)
        let back = try store.get(id)
        #expect(back?.outputJSON == #"{"sum":3}"#)
        #expect(back?.logLines == 2)
    }

    @Test func unknownIdIsNotFound() throws {
        let store = try SQLiteStore(path: ":memory:")
        #expect(throws: StoreError.notFound("nope")) { try store.transition("nope", to: .running) }
        #expect(try store.get("nope") == nil)
    }

    @Test func linesAreStoredInBatchesAndReadInPages() throws {
        let store = try SQLiteStore(path: ":memory:")
        let id = try make(store, .running)
        let lines = (1...2500).map { LogLine(seq: Int64($0), stream: $0 % 2 == 0 ? .stderr : .stdout, ts: 1, line: "l\($0)") }
        try store.appendLines(id, Array(lines[0..<1000]))
        try store.appendLines(id, Array(lines[1000...]))
        let page = try store.lines(id, after: 998, limit: 3)
        #expect(page.map(\.seq) == [999, 1000, 1001])
        #expect(page[1].stream == .stderr)
        #expect(try store.lines(id, after: 2500, limit: 10).isEmpty)
        #expect(try store.maxSeq(id) == 2500)
    }

    @Test func duplicateSeqIsRefused() throws {
        let store = try SQLiteStore(path: ":memory:")
        let id = try make(store, .running)
        try store.appendLines(id, [LogLine(seq: 1, stream: .stdout, ts: 1, line: "a")])
        #expect(throws: (any Error).self) { try store.appendLines(id, [LogLine(seq: 1, stream: .stdout, ts: 1, line: "b")]) }
    }

    @Test func listIsNewestFirstWithCursorAndFilters() throws {
        let store = try SQLiteStore(path: ":memory:")
        var made: [String] = []
        for i in 0..<7 {
            let r = record(runtime: i % 2 == 0 ? .python : .shell)
            try store.insert(r)
            made.append(r.id)
        }
        let first = try store.list(limit: 3, cursor: nil, filter: WorkloadFilter())
        #expect(first.records.map(\.id) == Array(made.reversed()[0..<3]))
        let second = try store.list(limit: 3, cursor: first.nextCursor, filter: WorkloadFilter())
        #expect(second.records.map(\.id) == Array(made.reversed()[3..<6]))
        let third = try store.list(limit: 3, cursor: second.nextCursor, filter: WorkloadFilter())
        #expect(third.records.map(\.id) == [made[0]])
        #expect(third.nextCursor == nil)
        let pythons = try store.list(limit: 50, cursor: nil, filter: WorkloadFilter(runtime: .python))
        #expect(pythons.records.count == 4)
        try store.transition(made[1], to: .running) { $0.isolationUsed = .process }
        #expect(try store.list(limit: 50, cursor: nil, filter: WorkloadFilter(status: .running)).records.map(\.id) == [made[1]])
        #expect(try store.list(limit: 50, cursor: nil, filter: WorkloadFilter(isolationUsed: .process)).records.map(\.id) == [made[1]])
    }

    @Test func failUnfinishedMarksPendingAndRunningOnly() throws {
        let store = try SQLiteStore(path: ":memory:")
        let p = try make(store, .pending)
        let r = try make(store, .running)
        try store.appendLines(r, [LogLine(seq: 1, stream: .stdout, ts: 1, line: "x")])
        let c = try make(store, .completed)
        let ids = try store.failUnfinished(error: "server restarted")
        #expect(Set(ids) == [p, r])
        #expect(try store.get(p)?.status == .failed)
        #expect(try store.get(r)?.error == "server restarted")
        #expect(try store.get(r)?.logLines == 1)
        #expect(try store.get(c)?.status == .completed)
    }

    @Test func statsCountStatusesAndPercentiles() throws {
        let store = try SQLiteStore(path: ":memory:")
        for ms in [10, 20, 30, 40, 100] {
            let id = try make(store, .running)
            try store.transition(id, to: .completed) { r in
                r.isolationUsed = .process
                r.durationMs = Int64(ms)
                r.logLines = 2
            }
        }
        _ = try make(store, .pending)
        let s = try store.stats()
        #expect(s.total == 6)
        #expect(s.byStatus[.completed] == 5)
        #expect(s.byStatus[.pending] == 1)
        #expect(s.backends["process"]?.count == 5)
        #expect(s.backends["process"]?.p50Ms == 30)
        #expect(s.backends["process"]?.p95Ms == 100)
        #expect(s.backends["process"]?.avgMs == 40)
        #expect(s.logLinesTotal == 10)
    }
}
