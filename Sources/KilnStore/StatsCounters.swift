internal import GRDB
import KilnCore

/// `/v1/stats` from counters, not from a scan of every workload (SPEC §8: milliseconds at a
/// million stored workloads). Triggers on `workloads` keep two small tables as rows are
/// inserted, change and are deleted, in the same transaction as the change:
///
/// - `workload_counts`: workloads and their log lines per tenant and status;
/// - `workload_durations`: finished durations per tenant, backend and duration bucket. A
///   bucket is the duration in ms, exact below one second and cut to three significant
///   figures above (12,345 ms counts as 12,300), so a backend has a few thousand buckets
///   at most and p50/p95 are read by walking them; the average is exact (`total_ms`).
///
/// Written as SQL triggers because they then hold for every write path (transitions,
/// `failUnfinished`, purge, retention) with no code path able to forget them.
enum StatsCounters {
    /// The bucket of a duration, as SQL over `ms`.
    static func bucket(_ ms: String) -> String {
        """
        CASE WHEN \(ms) < 1000 THEN \(ms) WHEN \(ms) < 10000 THEN \(ms) / 10 * 10 WHEN \(ms) < 100000 THEN \(ms) / 100 * 100
             WHEN \(ms) < 1000000 THEN \(ms) / 1000 * 1000 WHEN \(ms) < 10000000 THEN \(ms) / 10000 * 10000
             ELSE \(ms) / 100000 * 100000 END
        """
    }

    /// Adds (`sign` 1) or removes (-1) row `r` (NEW or OLD) from both tables.
    private static func count(_ r: String, _ sign: Int) -> String {
        """
        INSERT INTO workload_counts (tenant, status, n, log_lines) VALUES (\(r).tenant, \(r).status, \(sign), \(sign) * \(r).log_lines)
            ON CONFLICT (tenant, status) DO UPDATE SET n = n + excluded.n, log_lines = log_lines + excluded.log_lines;
        INSERT INTO workload_durations (tenant, backend, bucket, n, total_ms)
            SELECT \(r).tenant, \(r).isolation_used, \(bucket("\(r).duration_ms")), \(sign), \(sign) * \(r).duration_ms
            WHERE \(r).duration_ms IS NOT NULL AND \(r).isolation_used IS NOT NULL
            ON CONFLICT (tenant, backend, bucket) DO UPDATE SET n = n + excluded.n, total_ms = total_ms + excluded.total_ms;
        """
    }

    static func migrate(_ db: Database) throws {
        let counted = ["status", "tenant", "log_lines", "duration_ms", "isolation_used"]
        let changed = counted.map { "OLD.\($0) IS NOT NEW.\($0)" }.joined(separator: " OR ")
        try db.execute(sql: """
            CREATE TABLE workload_counts (
                tenant TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, log_lines INTEGER NOT NULL,
                PRIMARY KEY (tenant, status)
            ) WITHOUT ROWID;
            CREATE TABLE workload_durations (
                tenant TEXT NOT NULL, backend TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, total_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, backend, bucket)
            ) WITHOUT ROWID;
            INSERT INTO workload_counts (tenant, status, n, log_lines)
                SELECT tenant, status, count(*), sum(log_lines) FROM workloads GROUP BY tenant, status;
            INSERT INTO workload_durations (tenant, backend, bucket, n, total_ms)
                SELECT tenant, isolation_used, \(bucket("duration_ms")) AS b, count(*), sum(duration_ms) FROM workloads
                WHERE duration_ms IS NOT NULL AND isolation_used IS NOT NULL GROUP BY tenant, isolation_used, b;
            CREATE TRIGGER workloads_count_insert AFTER INSERT ON workloads BEGIN
                \(count("NEW", 1))
            END;
            CREATE TRIGGER workloads_count_delete AFTER DELETE ON workloads BEGIN
                \(count("OLD", -1))
            END;
            CREATE TRIGGER workloads_count_update AFTER UPDATE ON workloads WHEN \(changed) BEGIN
                \(count("OLD", -1))
                \(count("NEW", 1))
            END;
            -- Stats no longer sort durations; every list filter, alone and within a tenant,
            -- walks an index in id order.
            DROP INDEX workloads_isolation_duration;
            CREATE INDEX workloads_tenant_status ON workloads(tenant, status, id);
            CREATE INDEX workloads_isolation ON workloads(isolation_used, id);
            CREATE INDEX workloads_tenant_isolation ON workloads(tenant, isolation_used, id);
            CREATE INDEX workloads_runtime ON workloads(runtime, id);
            CREATE INDEX workloads_tenant_runtime ON workloads(tenant, runtime, id);
            """)
    }

    static func read(_ db: Database, tenant: String?) throws -> StoreStats {
        // `tenant IS NULL` is never true of a row: with no tenant, `? IS NULL` keeps every row.
        let scope = "(? IS NULL OR tenant = ?)"
        let args: StatementArguments = [tenant, tenant]
        var byStatus: [WorkloadStatus: Int] = [:]
        var total = 0
        var lines: Int64 = 0
        for row in try Row.fetchAll(db, sql: "SELECT status, sum(n) AS n, sum(log_lines) AS lines FROM workload_counts WHERE \(scope) GROUP BY status",
                                    arguments: args) {
            let n: Int = row["n"]
            guard n > 0, let s = WorkloadStatus(rawValue: row["status"]) else { continue }
            byStatus[s] = n
            total += n
            lines += row["lines"]
        }
        var buckets: [String: [(ms: Int64, n: Int, total: Int64)]] = [:]
        for row in try Row.fetchAll(db, sql: """
            SELECT backend, bucket, sum(n) AS n, sum(total_ms) AS total FROM workload_durations WHERE \(scope)
            GROUP BY backend, bucket HAVING sum(n) > 0 ORDER BY backend, bucket
            """, arguments: args) {
            buckets[row["backend"], default: []].append((row["bucket"], row["n"], row["total"]))
        }
        let backends = buckets.mapValues { b -> BackendStats in
            let n = b.reduce(0) { $0 + $1.n }
            let sum = b.reduce(Int64(0)) { $0 + $1.total }
            // The value at 0-based rank ceil(n·p) - 1 in duration order.
            func percentile(_ p: Double) -> Int64 {
                let rank = max(0, Int((Double(n) * p).rounded(.up)) - 1)
                var seen = 0
                for bucket in b {
                    seen += bucket.n
                    if seen > rank { return bucket.ms }
                }
                return b.last?.ms ?? 0
            }
            return BackendStats(count: n, avgMs: Double(sum) / Double(max(1, n)), p50Ms: percentile(0.5), p95Ms: percentile(0.95))
        }
        return StoreStats(byStatus: byStatus, total: total, backends: backends, logLinesTotal: lines)
    }
}
