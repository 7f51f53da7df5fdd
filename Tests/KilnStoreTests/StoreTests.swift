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
    /// What the stats must say, computed from every record (as the store did before counters).
    func expectedStats(_ records: [WorkloadRecord], tenant: String?) -> (Int, [WorkloadStatus: Int], Int64, [String: (Int, Int64, Int64)]) {
        let mine = records.filter { tenant == nil || $0.tenant == tenant }
        var byStatus: [WorkloadStatus: Int] = [:]
        for r in mine { byStatus[r.status, default: 0] += 1 }
        var backends: [String: (Int, Int64, Int64)] = [:]
        for (name, rs) in Dictionary(grouping: mine.filter { $0.durationMs != nil && $0.isolationUsed != nil }, by: { $0.isolationUsed!.rawValue }) {
            let d = rs.map { $0.durationMs! }.sorted()
            func at(_ p: Double) -> Int64 { d[max(0, Int((Double(d.count) * p).rounded(.up)) - 1)] }
            backends[name] = (d.count, at(0.5), at(0.95))
        }
        return (mine.count, byStatus, mine.reduce(0) { $0 + $1.logLines }, backends)
    }

    func all(_ store: SQLiteStore) throws -> [WorkloadRecord] {
        try store.list(limit: 100_000, cursor: nil, filter: WorkloadFilter()).records
    }

    func checkStats(_ store: SQLiteStore, _ tenants: [String?]) throws {
        let records = try all(store)
        for tenant in tenants {
            let s = try store.stats(tenant: tenant)
            let (total, byStatus, lines, backends) = expectedStats(records, tenant: tenant)
            #expect(s.total == total && s.byStatus == byStatus && s.logLinesTotal == lines, "tenant \(tenant ?? "all")")
            #expect(s.backends.mapValues { [$0.count, Int($0.p50Ms), Int($0.p95Ms)] } == backends.mapValues { [$0.0, Int($0.1), Int($0.2)] },
                    "tenant \(tenant ?? "all")")
        }
    }

    /// The counters follow every write path: inserts, transitions, failUnfinished, purge and
    /// retention, across tenants (durations under a second, where buckets are exact).
    @Test func statsCountersFollowEveryChange() throws {
        let store = try SQLiteStore(path: path())
        var rng = SystemRandomNumberGenerator()
        let tenants = ["default", "team-a", "team-b"]
        let backends: [Isolation] = [.process, .sandbox, .isolate]
        for i in 0..<300 {
            var r = record()
            r.tenant = tenants[i % 3]
            try store.insert(r)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: continue
            case 1: try store.transition(r.id, to: .running) { $0.isolationUsed = backends[i % 3] }
            default:
                try store.transition(r.id, to: .running) { $0.isolationUsed = backends[(i / 3) % 3] }
                let status: WorkloadStatus = [.completed, .failed, .killed][i % 3]
                let ms = Int64.random(in: 0..<1000, using: &rng)
                let lines = Int64.random(in: 0..<50, using: &rng)
                try store.transition(r.id, to: status) { $0.durationMs = ms; $0.logLines = lines; $0.finishedAt = Int64(i) }
            }
        }
        try checkStats(store, [nil] + tenants + ["nobody"])
        for r in try all(store).prefix(40) where r.status.isTerminal { _ = try store.purge(r.id) }
        _ = try store.purgeFinished(before: 100, limit: 30, chunk: 10)
        try checkStats(store, [nil] + tenants)
        _ = try store.failUnfinished(error: "server restarted")
        try checkStats(store, [nil] + tenants)
    }

    /// Above a second a duration counts to three significant figures; the average stays exact.
    @Test func longDurationsCountToThreeSignificantFigures() throws {
        let store = try SQLiteStore(path: ":memory:")
        for ms in [999, 12_345, 12_399, 123_456] {
            let id = try make(store, .running)
            try store.transition(id, to: .completed) { $0.isolationUsed = .process; $0.durationMs = Int64(ms) }
        }
        let b = try #require(try store.stats().backends["process"])
        #expect(b.p50Ms == 12_300 && b.p95Ms == 123_000)
        #expect(b.avgMs == Double(999 + 12_345 + 12_399 + 123_456) / 4)
    }

    /// A database made before the counters gets them from the rows it holds.
    @Test func theCountersMigrationCountsWhatIsAlreadyStored() throws {
        let file = path()
        do {
            let old = try SQLiteStore(path: file, migrateUpTo: "v7-write-probe")
            // Rows as that schema has them (the record type writes today's columns).
            for (i, ms) in [10, 20, 30].enumerated() {
                try old.executeForTesting("""
                    INSERT INTO workloads (id, status, runtime, isolation, isolation_used, cpus, mem_mb, timeout_s, log_lines, duration_ms, created_at)
                    VALUES ('\(ids.next())', 'failed', 'shell', 'auto', 'sandbox', 1, 256, 30, 3, \(ms), \(i))
                    """)
            }
            try old.executeForTesting("INSERT INTO workloads (id, status, runtime, isolation, cpus, mem_mb, timeout_s, created_at) VALUES ('\(ids.next())', 'pending', 'shell', 'auto', 1, 256, 30, 4)")
        }
        let store = try SQLiteStore(path: file)
        try checkStats(store, [nil, "default"])
        #expect(try store.stats().total == 4 && store.stats().logLinesTotal == 9)
    }

    /// Space freed by a purge goes back to the file system (incremental vacuum), not only
    /// to SQLite's free list: a retention sweep shrinks the file.
    @Test func purgedSpaceIsReclaimed() throws {
        let file = path()
        let store = try SQLiteStore(path: file)
        let id = try make(store, .running)
        let text = String(repeating: "z", count: 200)
        for batch in 0..<25 {
            try store.appendLines(id, (1...2000).map { LogLine(seq: Int64(batch * 2000 + $0), stream: .stdout, ts: 0, line: text) })
        }
        try store.transition(id, to: .completed)
        func size() -> Int {
            [file, file + "-wal"].compactMap { try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int }.reduce(0, +)
        }
        _ = try store.reclaimSpace(maxPages: 1)  // a checkpoint, so the lines are in the file
        let full = size()
        #expect(full > 10 << 20, "\(full) bytes with 50,000 lines of 200 bytes")
        #expect(try store.purge(id))
        var freed = 0
        while true {
            let step = try store.reclaimSpace(maxPages: 256)
            if step == 0 { break }
            freed += step
        }
        #expect(freed > 9 << 20)
        #expect(size() < full / 4, "\(size()) bytes after the purge, \(full) before")
    }
}
