import Foundation
import KilnCore
import KilnStore
import Logging
import NIOCore
import PostgresNIO

/// The store of cluster mode (`KILN_DB=postgres://…`): the same contract as `SQLiteStore`
/// on a database every node shares. The state machine holds in the database: a status
/// change is one UPDATE conditional on the status it was read in, so two nodes can never
/// both move a workload (a kill and a claim racing: one wins, the other re-reads).
///
/// Stored lines and terminal statuses announce themselves in the same statement
/// (`pg_notify`, delivered at commit), so an `ended` signal never comes before the status.
public final class PostgresStore: ClusterStore, @unchecked Sendable {
    // `@unchecked`: every stored property is a `let` of a Sendable type, except `listener`,
    // which `listenerLock` guards.
    let client: PostgresClient
    let url: PostgresURL
    let logger: Logger
    private let runTask: Task<Void, Never>
    private let listenerLock = NSLock()
    private var listener: PostgresListener?
    /// The channel every announcement goes to (payloads: `L id seq`, `E id`, `K id`, `W`).
    static let channel = "kiln"

    /// Connects, applies migrations and checks that the database takes writes. `logger` gets
    /// postgres-nio's background messages at warning and above (never a credential).
    public init(url: PostgresURL, logger: Logger) throws {
        self.url = url
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        self.logger = quiet
        let client = PostgresClient(configuration: url.clientConfiguration, backgroundLogger: quiet)
        self.client = client
        runTask = Task { await client.run() }
        do {
            // One direct connection first: a refused or unreachable address fails here within
            // the connect timeout, where the pool would queue the request and retry.
            try Blocking.run(timeout: .seconds(10)) { [quiet] in
                let c = try await PostgresConnection.connect(configuration: url.connectionConfiguration, id: 0, logger: quiet)
                try? await c.close()
            }
            try Blocking.run(timeout: .seconds(30)) { [quiet] in try await PostgresMigrations.migrate(client, logger: quiet) }
            try checkWritable()
        } catch {
            runTask.cancel()
            throw StoreError.cannotOpen("cannot use database \(url.redacted): \(error)")
        }
    }

    public func close() {
        listenerLock.lock()
        let l = listener
        listener = nil
        listenerLock.unlock()
        l?.stop()
        // Cancelling `run()` closes the pool's connections.
        runTask.cancel()
    }

    /// One statement, its rows collected.
    func rows(_ query: PostgresQuery, timeout: Duration = .seconds(10)) throws -> [PostgresRow] {
        let client = self.client, logger = self.logger
        return try Blocking.run(timeout: timeout) {
            var out: [PostgresRow] = []
            for try await row in try await client.query(query, logger: logger) { out.append(row) }
            return out
        }
    }

    func execute(_ query: PostgresQuery) throws {
        _ = try rows(query)
    }

    // MARK: Workloads

    static let columns = """
        id, status, runtime, isolation, isolation_used, exit_code, output, output_truncated, error, cpus, mem_mb,
        timeout_s, pids, disk_mb, log_lines, log_truncated, duration_ms, created_at, started_at, finished_at, tenant
        """

    /// `columns`, each prefixed `w.` (a query that joins `workloads` as `w`).
    static let qualifiedColumns = columns.split(separator: ",")
        .map { "w." + $0.trimmingCharacters(in: .whitespacesAndNewlines) }.joined(separator: ", ")

    static func record(_ row: PostgresRow) throws -> WorkloadRecord {
        let r = row.makeRandomAccess()
        return WorkloadRecord(
            id: try r["id"].decode(String.self),
            status: WorkloadStatus(rawValue: try r["status"].decode(String.self)) ?? .failed,
            runtime: Runtime(rawValue: try r["runtime"].decode(String.self)) ?? .shell,
            isolation: Isolation(rawValue: try r["isolation"].decode(String.self)) ?? .auto,
            isolationUsed: try r["isolation_used"].decode(String?.self).flatMap(Isolation.init(rawValue:)),
            exitCode: try r["exit_code"].decode(Int?.self),
            outputJSON: try r["output"].decode(String.self),
            outputTruncated: try r["output_truncated"].decode(Bool.self),
            error: try r["error"].decode(String?.self),
            resources: Resources(cpus: try r["cpus"].decode(Int.self), memMB: try r["mem_mb"].decode(Int.self),
                                 timeoutS: try r["timeout_s"].decode(Int.self), pids: try r["pids"].decode(Int.self),
                                 diskMB: try r["disk_mb"].decode(Int.self)),
            logLines: try r["log_lines"].decode(Int64.self),
            logTruncated: try r["log_truncated"].decode(Bool.self),
            durationMs: try r["duration_ms"].decode(Int64?.self),
            createdAt: try r["created_at"].decode(Int64.self),
            startedAt: try r["started_at"].decode(Int64?.self),
            finishedAt: try r["finished_at"].decode(Int64?.self),
            tenant: try r["tenant"].decode(String.self))
    }

    static func insertQuery(_ r: WorkloadRecord) -> PostgresQuery {
        """
        INSERT INTO workloads (id, status, runtime, isolation, isolation_used, exit_code, output, output_truncated, error,
            cpus, mem_mb, timeout_s, pids, disk_mb, log_lines, log_truncated, duration_ms, created_at, started_at,
            finished_at, tenant)
        VALUES (\(r.id), \(r.status.rawValue), \(r.runtime.rawValue), \(r.isolation.rawValue), \(r.isolationUsed?.rawValue),
            \(r.exitCode), \(r.outputJSON), \(r.outputTruncated), \(r.error), \(r.resources.cpus), \(r.resources.memMB),
            \(r.resources.timeoutS), \(r.resources.pids), \(r.resources.diskMB), \(r.logLines), \(r.logTruncated),
            \(r.durationMs), \(r.createdAt), \(r.startedAt), \(r.finishedAt), \(r.tenant))
        """
    }

    public func insert(_ r: WorkloadRecord) throws {
        try execute(PostgresStore.insertQuery(r))
    }

    @discardableResult
    public func transition(_ id: String, to status: WorkloadStatus,
                           _ change: @Sendable (inout WorkloadRecord) -> Void) throws -> WorkloadRecord {
        // Compare and set: the UPDATE holds only while the status is still the one read. Another
        // node's change in between (a claim, a kill) makes it match nothing; read again.
        while true {
            guard var r = try get(id) else { throw StoreError.notFound(id) }
            let from = r.status
            guard from.canMove(to: status) else { throw StoreError.invalidTransition(id: id, from: from, to: status) }
            r.status = status
            change(&r)
            r.id = id
            let terminal = status.isTerminal
            let updated = try rows("""
                WITH u AS (
                    UPDATE workloads SET status = \(r.status.rawValue), isolation_used = \(r.isolationUsed?.rawValue),
                        exit_code = \(r.exitCode), output = \(r.outputJSON), output_truncated = \(r.outputTruncated),
                        error = \(r.error), log_lines = \(r.logLines), log_truncated = \(r.logTruncated),
                        duration_ms = \(r.durationMs), started_at = \(r.startedAt), finished_at = \(r.finishedAt)
                    WHERE id = \(id) AND status = \(from.rawValue)
                    RETURNING id
                ), d AS (
                    DELETE FROM workload_specs WHERE \(terminal) AND id IN (SELECT id FROM u)
                )
                SELECT CASE WHEN \(terminal) THEN pg_notify(\(PostgresStore.channel), 'E ' || id) END FROM u
                """)
            if !updated.isEmpty { return r }
        }
    }

    public func get(_ id: String) throws -> WorkloadRecord? {
        try rows("SELECT \(unescaped: PostgresStore.columns) FROM workloads WHERE id = \(id)").first.map(PostgresStore.record)
    }

    public func list(limit: Int, cursor: String?, filter: WorkloadFilter) throws -> (records: [WorkloadRecord], nextCursor: String?) {
        // Each filter is either its value or NULL (no filter): one statement for every combination.
        let records = try rows("""
            SELECT \(unescaped: PostgresStore.columns) FROM workloads
            WHERE (\(cursor)::text IS NULL OR id < \(cursor))
              AND (\(filter.status?.rawValue)::text IS NULL OR status = \(filter.status?.rawValue))
              AND (\(filter.isolationUsed?.rawValue)::text IS NULL OR isolation_used = \(filter.isolationUsed?.rawValue))
              AND (\(filter.runtime?.rawValue)::text IS NULL OR runtime = \(filter.runtime?.rawValue))
              AND (\(filter.tenant)::text IS NULL OR tenant = \(filter.tenant))
            ORDER BY id DESC LIMIT \(limit + 1)
            """).map(PostgresStore.record)
        return listPage(records, limit: limit)
    }

    /// Every unfinished workload of every node: only for a database no live node uses
    /// (cluster nodes fail their own with `failRunning(onNode:)`).
    public func failUnfinished(error: String, at now: Int64) throws -> [String] {
        try fail(where: "status IN ('pending', 'running')", error: error, at: now, binds: [])
    }

    /// Fails the workloads `condition` selects (an SQL condition over `workloads`, with
    /// `binds` as $1…), setting their line counts from the stored lines, and announces each end.
    func fail(where condition: String, error: String, at now: Int64, binds: [String]) throws -> [String] {
        var q = PostgresQuery(unsafeSQL: """
            WITH u AS (
                UPDATE workloads SET status = 'failed', error = $\(binds.count + 1), finished_at = $\(binds.count + 2),
                    duration_ms = CASE WHEN started_at IS NULL THEN NULL ELSE $\(binds.count + 2) - started_at END,
                    log_lines = (SELECT coalesce(max(seq), 0) FROM log_lines WHERE workload_id = workloads.id)
                WHERE \(condition)
                RETURNING id
            ), d AS (
                DELETE FROM workload_specs WHERE id IN (SELECT id FROM u)
            )
            SELECT id, pg_notify('\(PostgresStore.channel)', 'E ' || id) FROM u
            """)
        for b in binds { q.binds.append(b) }
        q.binds.append(error)
        q.binds.append(now)
        return try rows(q).map { try $0.decode((String, String).self).0 }
    }

    public func purge(_ id: String) throws -> Bool {
        guard let r = try get(id) else { return false }
        guard r.status.isTerminal else { throw StoreError.notFinished(id) }
        // Lines first, then the record only while it is still finished: one statement.
        let deleted = try rows("""
            WITH l AS (DELETE FROM log_lines WHERE workload_id = \(id)),
                 w AS (DELETE FROM workloads WHERE id = \(id) AND status IN ('completed', 'failed', 'killed') RETURNING id)
            SELECT id FROM w
            """)
        return !deleted.isEmpty
    }

    public func purgeFinished(before cutoff: Int64, limit: Int, chunk: Int) throws -> Int {
        let ids = try rows("""
            SELECT id FROM workloads WHERE finished_at IS NOT NULL AND finished_at < \(cutoff)
                AND status IN ('completed', 'failed', 'killed') ORDER BY finished_at LIMIT \(limit)
            """).map { try $0.decode(String.self) }
        for id in ids {
            let last = try maxSeq(id)
            var upTo: Int64 = 0
            while upTo < last {
                upTo += Int64(chunk)
                try execute("DELETE FROM log_lines WHERE workload_id = \(id) AND seq <= \(upTo)")
            }
            _ = try purge(id)
        }
        return ids.count
    }

    public func checkWritable() throws {
        try execute("""
            INSERT INTO write_probe (id, at) VALUES (1, \(Millis.now())) ON CONFLICT (id) DO UPDATE SET at = excluded.at
            """)
    }

    /// PostgreSQL's autovacuum gives deleted rows' space back on its own.
    public func reclaimSpace(maxPages: Int) throws -> Int { 0 }

    // MARK: Log lines

    /// One statement per batch: the lines as arrays through `unnest`, and the announcement.
    public func appendLines(_ id: String, _ lines: [LogLine]) throws {
        guard let last = lines.last?.seq else { return }
        let seqs = lines.map(\.seq), streams = lines.map(\.stream.rawValue), ts = lines.map(\.ts)
        let texts = lines.map { ByteBuffer(string: $0.line) }
        try execute("""
            WITH ins AS (
                INSERT INTO log_lines (workload_id, seq, stream, ts, line)
                SELECT \(id), * FROM unnest(\(seqs)::bigint[], \(streams)::text[], \(ts)::bigint[], \(texts)::bytea[])
                -- A batch sent again after a timeout that had in fact committed: already there.
                ON CONFLICT (workload_id, seq) DO NOTHING
            )
            SELECT pg_notify(\(PostgresStore.channel), \("L \(id) \(last)"))
            """)
    }

    public func lines(_ id: String, after: Int64, limit: Int) throws -> [LogLine] {
        try rows("""
            SELECT seq, stream, ts, line FROM log_lines WHERE workload_id = \(id) AND seq > \(after) ORDER BY seq LIMIT \(limit)
            """).map { row in
            let (seq, stream, ts, line) = try row.decode((Int64, String, Int64, ByteBuffer).self)
            return LogLine(seq: seq, stream: LogStream(rawValue: stream) ?? .stdout, ts: ts, line: String(buffer: line))
        }
    }

    public func seqBeforeLast(_ id: String, count: Int) throws -> Int64 {
        max(0, try maxSeq(id) - Int64(count))
    }

    public func maxSeq(_ id: String) throws -> Int64 {
        try rows("SELECT coalesce(max(seq), 0)::bigint FROM log_lines WHERE workload_id = \(id)").first?.decode(Int64.self) ?? 0
    }

    // MARK: Stats

    /// Counted by the database at each call (a cluster's history is expected to be kept
    /// short by retention; the counters of `SQLiteStore` are a later step here).
    public func stats(tenant: String?) throws -> StoreStats {
        var byStatus: [WorkloadStatus: Int] = [:]
        var total = 0
        var lines: Int64 = 0
        for row in try rows("""
            SELECT status, count(*)::bigint, coalesce(sum(log_lines), 0)::bigint FROM workloads
            WHERE (\(tenant)::text IS NULL OR tenant = \(tenant)) GROUP BY status
            """) {
            let (status, n, l) = try row.decode((String, Int64, Int64).self)
            if let s = WorkloadStatus(rawValue: status) { byStatus[s] = Int(n) }
            total += Int(n)
            lines += l
        }
        var backends: [String: BackendStats] = [:]
        for row in try rows("""
            SELECT isolation_used, count(*)::bigint, avg(duration_ms)::float8,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms)::bigint,
                percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)::bigint
            FROM workloads WHERE duration_ms IS NOT NULL AND isolation_used IS NOT NULL
                AND (\(tenant)::text IS NULL OR tenant = \(tenant))
            GROUP BY isolation_used
            """) {
            let (name, n, avg, p50, p95) = try row.decode((String, Int64, Double, Int64, Int64).self)
            backends[name] = BackendStats(count: Int(n), avgMs: avg, p50Ms: p50, p95Ms: p95)
        }
        return StoreStats(byStatus: byStatus, total: total, backends: backends, logLinesTotal: lines)
    }

    // MARK: Listening

    public func listen(_ handler: @escaping @Sendable (ClusterSignal) -> Void) {
        let l = PostgresListener(url: url, channel: PostgresStore.channel, logger: logger, handler: handler)
        listenerLock.lock()
        listener = l
        listenerLock.unlock()
        l.start()
    }
}
