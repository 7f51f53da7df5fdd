import Foundation
internal import GRDB
internal import GRDBSQLite
import KilnCore

/// Kiln's state in SQLite through GRDB: WAL mode, named migrations, and the workload
/// state machine enforced on every status change.
public final class SQLiteStore: WorkloadStore {
    private let db: any DatabaseWriter

    /// Opens (creating the file and its folder) the database at `path`; `:memory:` keeps it in memory.
    public convenience init(path: String) throws {
        try self.init(path: path, migrateUpTo: nil)
    }

    /// `migrateUpTo` stops at a named migration: tests build an older database with it.
    init(path: String, migrateUpTo: String?) throws {
        var config = Configuration()
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        config.busyMode = .timeout(5)
        do {
            if path == ":memory:" {
                db = try DatabaseQueue(configuration: config)
            } else {
                let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                if migrateUpTo == nil { try SQLiteStore.checkIntact(path) }
                try SQLiteStore.createWithIncrementalVacuum(path)
                db = try DatabasePool(path: path, configuration: config)
            }
            if let migrateUpTo {
                try SQLiteStore.migrator.migrate(db, upTo: migrateUpTo)
            } else {
                try SQLiteStore.migrator.migrate(db)
            }
        } catch {
            throw StoreError.cannotOpen("cannot open database \(path): \(error)")
        }
        // Refused at start rather than failing the first workload: a read-only file, folder
        // or file system opens and migrates (nothing to write) but cannot take a write.
        do {
            if migrateUpTo == nil { try checkWritable() }
        } catch {
            let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
            throw StoreError.cannotOpen("database \(path) cannot be written (is the file, its folder \(folder) or its file system read-only?): \(error)")
        }
    }

    /// A new database file gets `auto_vacuum = INCREMENTAL`, so pages freed by purges and
    /// retention can go back to the file system (`reclaimSpace`). SQLite takes the setting
    /// only while the file has no page yet, before WAL mode writes its header, hence a
    /// rollback-journal connection first. An existing file is left as it is (an older
    /// database keeps its size unless VACUUMed once with the setting).
    static func createWithIncrementalVacuum(_ path: String) throws {
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let queue = try DatabaseQueue(path: path)
        try queue.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA auto_vacuum = INCREMENTAL")
            try db.execute(sql: "VACUUM")
        }
        try queue.close()
    }

    /// A damaged file (zeroed or torn pages) opened, migrated and said healthy, then failed
    /// the first request that read the bad page; a file that is not SQLite at all failed on
    /// its first query. Both are refused at start instead, through a read-only connection,
    /// so the file is left exactly as it was. quick_check reads every page once (about a
    /// second per GB).
    static func checkIntact(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        var config = Configuration()
        config.readonly = true
        let problems: [String]
        do {
            let queue = try DatabaseQueue(path: path, configuration: config)
            problems = try queue.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check(3)") }
            try queue.close()
        } catch {
            throw StoreError.cannotOpen("database \(path) is damaged or not an SQLite database (\(error)); restore it from a backup, or move it away to start with an empty one")
        }
        guard problems == ["ok"] else {
            let found = problems.joined(separator: "; ").replacingOccurrences(of: "\n", with: "; ")
            throw StoreError.cannotOpen("database \(path) is damaged (\(found)); restore it from a backup, or move it away to start with an empty one")
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-workloads") { db in
            try db.execute(sql: """
                CREATE TABLE workloads (
                    id TEXT PRIMARY KEY NOT NULL,
                    status TEXT NOT NULL,
                    runtime TEXT NOT NULL,
                    isolation TEXT NOT NULL,
                    isolation_used TEXT,
                    exit_code INTEGER,
                    output TEXT NOT NULL DEFAULT 'null',
                    output_truncated INTEGER NOT NULL DEFAULT 0,
                    error TEXT,
                    cpus INTEGER NOT NULL,
                    mem_mb INTEGER NOT NULL,
                    timeout_s INTEGER NOT NULL,
                    log_lines INTEGER NOT NULL DEFAULT 0,
                    duration_ms INTEGER,
                    created_at INTEGER NOT NULL,
                    started_at INTEGER,
                    finished_at INTEGER
                ) WITHOUT ROWID;
                CREATE INDEX workloads_status ON workloads(status, id);
                CREATE INDEX workloads_isolation_duration ON workloads(isolation_used, duration_ms);
                """)
        }
        m.registerMigration("v1-log-lines") { db in
            try db.execute(sql: """
                CREATE TABLE log_lines (
                    workload_id TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    stream TEXT NOT NULL,
                    ts INTEGER NOT NULL,
                    line TEXT NOT NULL
                );
                CREATE UNIQUE INDEX log_lines_workload_seq ON log_lines(workload_id, seq);
                """)
        }
        // Lines clustered by (workload, seq): one b-tree written per line instead of a table
        // and an index (issue 6, B4: 1,000,000 lines stored in less CPU), and reads in seq
        // order walk neighbouring pages.
        m.registerMigration("v2-log-lines-clustered") { db in
            try db.execute(sql: """
                CREATE TABLE log_lines_clustered (
                    workload_id TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    stream TEXT NOT NULL,
                    ts INTEGER NOT NULL,
                    line TEXT NOT NULL,
                    PRIMARY KEY (workload_id, seq)
                ) WITHOUT ROWID;
                INSERT INTO log_lines_clustered (workload_id, seq, stream, ts, line)
                    SELECT workload_id, seq, stream, ts, line FROM log_lines;
                DROP TABLE log_lines;
                ALTER TABLE log_lines_clustered RENAME TO log_lines;
                """)
        }
        // Tenants (access control): what was stored before belongs to `default`.
        m.registerMigration("v3-tenant") { db in
            try db.execute(sql: """
                ALTER TABLE workloads ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
                CREATE INDEX workloads_tenant ON workloads(tenant, id);
                """)
        }
        m.registerMigration("v4-pids") { db in
            try db.execute(sql: "ALTER TABLE workloads ADD COLUMN pids INTEGER NOT NULL DEFAULT \(Resources.defaultPids)")
        }
        m.registerMigration("v5-log-truncated") { db in
            try db.execute(sql: "ALTER TABLE workloads ADD COLUMN log_truncated BOOLEAN NOT NULL DEFAULT 0")
        }
        // Retention finds what finished before a time without scanning every record.
        m.registerMigration("v6-finished-at") { db in
            try db.execute(sql: "CREATE INDEX workloads_finished_at ON workloads(finished_at) WHERE finished_at IS NOT NULL")
        }
        // One row that `checkWritable` rewrites after a storage error.
        m.registerMigration("v7-write-probe") { db in
            try db.execute(sql: "CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL, pad BLOB NOT NULL)")
        }
        m.registerMigration("v8-stats-counters") { db in try StatsCounters.migrate(db) }
        m.registerMigration("v9-disk-mb") { db in
            try db.execute(sql: "ALTER TABLE workloads ADD COLUMN disk_mb INTEGER NOT NULL DEFAULT \(Resources.defaultDiskMB)")
        }
        return m
    }

    /// Runs SQL as it is: tests write rows of an older schema with it.
    func executeForTesting(_ sql: String) throws {
        try db.write { try $0.execute(sql: sql) }
    }

    // MARK: Workloads

    public func insert(_ r: WorkloadRecord) throws {
        try db.write { db in try WorkloadRow(r).insert(db) }
    }

    /// Moves a workload to `status`, applying `change` to the record, if the state machine
    /// allows it; the check and the write are one transaction.
    @discardableResult
    public func transition(_ id: String, to status: WorkloadStatus,
                           _ change: @Sendable (inout WorkloadRecord) -> Void) throws -> WorkloadRecord {
        try db.write { db in
            guard var r = try WorkloadRow.fetchOne(db, key: id)?.record else { throw StoreError.notFound(id) }
            guard r.status.canMove(to: status) else {
                throw StoreError.invalidTransition(id: id, from: r.status, to: status)
            }
            r.status = status
            change(&r)
            r.id = id
            try WorkloadRow(r).update(db)
            return r
        }
    }

    public func get(_ id: String) throws -> WorkloadRecord? {
        try db.read { db in try WorkloadRow.fetchOne(db, key: id)?.record }
    }

    /// Newest first. The cursor is the id of the last record of the previous page.
    public func list(limit: Int, cursor: String?, filter: WorkloadFilter) throws -> (records: [WorkloadRecord], nextCursor: String?) {
        var clauses: [String] = []
        var args: [any DatabaseValueConvertible] = []
        if let cursor { clauses.append("id < ?"); args.append(cursor) }
        if let s = filter.status { clauses.append("status = ?"); args.append(s.rawValue) }
        if let i = filter.isolationUsed { clauses.append("isolation_used = ?"); args.append(i.rawValue) }
        if let r = filter.runtime { clauses.append("runtime = ?"); args.append(r.rawValue) }
        if let t = filter.tenant { clauses.append("tenant = ?"); args.append(t) }
        let whereSQL = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        args.append(limit + 1)
        let rows = try db.read { db in
            try WorkloadRow.fetchAll(db, sql: "SELECT * FROM workloads \(whereSQL) ORDER BY id DESC LIMIT ?", arguments: StatementArguments(args))
        }
        return listPage(rows.map(\.record), limit: limit)
    }

    /// Marks every `pending` or `running` workload `failed` with `error`; returns their ids.
    public func failUnfinished(error: String, at now: Int64) throws -> [String] {
        try db.write { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM workloads WHERE status IN ('pending', 'running')")
            try db.execute(sql: """
                UPDATE workloads SET status = 'failed', error = ?, finished_at = ?,
                    duration_ms = CASE WHEN started_at IS NULL THEN NULL ELSE ? - started_at END,
                    log_lines = (SELECT count(*) FROM log_lines WHERE workload_id = workloads.id)
                WHERE status IN ('pending', 'running')
                """, arguments: [error, now, now])
            return ids
        }
    }

    public func purge(_ id: String) throws -> Bool {
        try db.write { db in
            guard let row = try WorkloadRow.fetchOne(db, key: id) else { return false }
            guard row.record.status.isTerminal else { throw StoreError.notFinished(id) }
            try db.execute(sql: "DELETE FROM log_lines WHERE workload_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM workloads WHERE id = ?", arguments: [id])
            return true
        }
    }

    /// Deletes up to `limit` finished workloads that finished before `cutoff` (ms since the
    /// epoch), with their log lines; how many. The lines of a workload go in transactions of
    /// `chunk` lines, then the record, so no write holds the database for long; a sweep cut
    /// short leaves a record with part of its log, which the next sweep finishes.
    public func purgeFinished(before cutoff: Int64, limit: Int, chunk: Int = 10_000) throws -> Int {
        let terminal = WorkloadStatus.allCases.filter(\.isTerminal).map { "'\($0.rawValue)'" }.joined(separator: ",")
        let ids = try db.read { db in
            try String.fetchAll(db, sql: "SELECT id FROM workloads WHERE finished_at IS NOT NULL AND finished_at < ? AND status IN (\(terminal)) ORDER BY finished_at LIMIT ?",
                                arguments: [cutoff, limit])
        }
        for id in ids {
            var upTo: Int64 = 0
            let last = try maxSeq(id)
            while upTo < last {
                upTo += Int64(chunk)
                try db.write { db in
                    try db.execute(sql: "DELETE FROM log_lines WHERE workload_id = ? AND seq <= ?", arguments: [id, upTo])
                }
            }
            // The record, and any line left, in one transaction (a finished record stays finished).
            _ = try purge(id)
        }
        return ids.count
    }

    /// Rewrites the probe row with 64 KiB, about what a batch of lines takes, so that a
    /// store with room for a few bytes only does not count as writable again.
    public func checkWritable() throws {
        try db.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO write_probe (id, at, pad) VALUES (1, ?, randomblob(65536))",
                           arguments: [Millis.now()])
        }
    }

    /// Gives up to `maxPages` free pages back to the file system (incremental vacuum),
    /// then checkpoints so the WAL shrinks too; the bytes returned. Each call is one short
    /// write, so a sweep can call it in steps without holding writers up for long.
    public func reclaimSpace(maxPages: Int) throws -> Int {
        let freed = try db.writeWithoutTransaction { db -> Int in
            let before = try Int.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0
            guard before > 0 else { return 0 }
            try db.execute(sql: "PRAGMA incremental_vacuum(\(max(1, maxPages)))")
            let after = try Int.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0
            return (before - after) * (try Int.fetchOne(db, sql: "PRAGMA page_size") ?? 4096)
        }
        if freed > 0, let pool = db as? DatabasePool {
            _ = try? pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        }
        return freed
    }

    // MARK: Log lines

    /// Stores a batch of lines in one transaction.
    public func appendLines(_ id: String, _ lines: [LogLine]) throws {
        guard !lines.isEmpty else { return }
        let sql = "INSERT INTO log_lines (workload_id, seq, stream, ts, line) VALUES (?, ?, ?, ?, ?)"
        try db.write { db in
            let statement = try db.cachedStatement(sql: sql)
            // Bound and stepped through SQLite's C API, by hand: GRDB's StatementArguments box
            // every value (DatabaseValue, a retain and a release each), which was the largest
            // share of the server's samples in B4, and each line was first copied into a Data.
            // A line is bound as a BLOB of its UTF-8 bytes, so a NUL stays (C text ends there:
            // `nul\0hidden` was stored as `nul`). The statement is left reset and unbound,
            // as GRDB expects a cached statement to be.
            let raw = statement.sqliteStatement
            defer {
                sqlite3_reset(raw)
                sqlite3_clear_bindings(raw)
            }
            func check(_ code: CInt, _ want: CInt = SQLITE_OK) throws {
                guard code != want else { return }
                let message = db.sqliteConnection.map { String(cString: sqlite3_errmsg($0)) }
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: sql)
            }
            try check(sqlite3_bind_text(raw, 1, id, -1, SQLiteStore.transient))
            for l in lines {
                try check(sqlite3_reset(raw))
                try check(sqlite3_bind_int64(raw, 2, l.seq))
                try check(sqlite3_bind_text(raw, 3, l.stream.rawValue, -1, SQLiteStore.transient))
                try check(sqlite3_bind_int64(raw, 4, l.ts))
                var text = l.line
                try text.withUTF8 { bytes in
                    if let base = bytes.baseAddress, bytes.count > 0 {
                        // SQLITE_STATIC: the bytes outlive the step below.
                        try check(sqlite3_bind_blob(raw, 5, base, CInt(bytes.count), nil))
                    } else {
                        try check(sqlite3_bind_zeroblob(raw, 5, 0))
                    }
                    try check(sqlite3_step(raw), SQLITE_DONE)
                }
            }
        }
    }

    /// SQLite copies a value bound with this destructor (SQLITE_TRANSIENT).
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Lines with seq > `after`, in order, at most `limit`.
    public func lines(_ id: String, after: Int64, limit: Int) throws -> [LogLine] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT seq, stream, ts, line FROM log_lines WHERE workload_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                             arguments: [id, after, limit]).map { row in
                LogLine(seq: row["seq"], stream: LogStream(rawValue: row["stream"]) ?? .stdout, ts: row["ts"],
                        line: String(decoding: row["line"] as Data, as: UTF8.self))
            }
        }
    }

    /// The last `count` lines' first seq minus one: where a `tail=count` stream starts.
    public func seqBeforeLast(_ id: String, count: Int) throws -> Int64 {
        try db.read { db in
            let maxSeq = try Int64.fetchOne(db, sql: "SELECT max(seq) FROM log_lines WHERE workload_id = ?", arguments: [id]) ?? 0
            return max(0, maxSeq - Int64(count))
        }
    }

    public func maxSeq(_ id: String) throws -> Int64 {
        try db.read { db in
            try Int64.fetchOne(db, sql: "SELECT max(seq) FROM log_lines WHERE workload_id = ?", arguments: [id]) ?? 0
        }
    }

    // MARK: Stats

    /// Counts and durations, of one tenant's workloads or (nil) of all, from the counters
    /// that triggers keep as workloads change (`StatsCounters`): a few small reads, however
    /// many workloads are stored.
    public func stats(tenant: String?) throws -> StoreStats {
        try db.read { db in try StatsCounters.read(db, tenant: tenant) }
    }
}
