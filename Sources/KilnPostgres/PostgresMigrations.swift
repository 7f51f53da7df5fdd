import Foundation
import KilnCore
import Logging
import PostgresNIO

/// The PostgreSQL schema as named migrations, applied once each, in order, under an
/// advisory lock so that nodes starting together do not race. A new migration goes at the
/// end; an applied one is never edited.
enum PostgresMigrations {
    static let all: [(name: String, sql: [String])] = [
        ("v1-workloads", [
            """
            CREATE TABLE workloads (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                runtime TEXT NOT NULL,
                isolation TEXT NOT NULL,
                isolation_used TEXT,
                exit_code INTEGER,
                output TEXT NOT NULL DEFAULT 'null',
                output_truncated BOOLEAN NOT NULL DEFAULT false,
                error TEXT,
                cpus INTEGER NOT NULL,
                mem_mb INTEGER NOT NULL,
                timeout_s INTEGER NOT NULL,
                pids INTEGER NOT NULL,
                disk_mb INTEGER NOT NULL,
                log_lines BIGINT NOT NULL DEFAULT 0,
                log_truncated BOOLEAN NOT NULL DEFAULT false,
                duration_ms BIGINT,
                created_at BIGINT NOT NULL,
                started_at BIGINT,
                finished_at BIGINT,
                tenant TEXT NOT NULL,
                node TEXT
            )
            """,
            "CREATE INDEX workloads_status ON workloads (status, id)",
            "CREATE INDEX workloads_tenant ON workloads (tenant, id)",
            "CREATE INDEX workloads_pending ON workloads (id) WHERE status = 'pending'",
            "CREATE INDEX workloads_running_node ON workloads (node) WHERE status = 'running'",
            "CREATE INDEX workloads_finished_at ON workloads (finished_at) WHERE finished_at IS NOT NULL",
            // A line is bytes: PostgreSQL's text cannot hold NUL, and a log line may.
            """
            CREATE TABLE log_lines (
                workload_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                stream TEXT NOT NULL,
                ts BIGINT NOT NULL,
                line BYTEA NOT NULL,
                PRIMARY KEY (workload_id, seq)
            )
            """,
            // What a worker needs to run a workload submitted elsewhere; deleted at its end.
            """
            CREATE TABLE workload_specs (
                id TEXT PRIMARY KEY REFERENCES workloads (id) ON DELETE CASCADE,
                code BYTEA NOT NULL,
                input TEXT NOT NULL,
                env TEXT NOT NULL,
                isolation_limit TEXT
            )
            """,
            """
            CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                state TEXT NOT NULL,
                capacity INTEGER NOT NULL,
                running INTEGER NOT NULL,
                lease_at BIGINT NOT NULL,
                started_at BIGINT NOT NULL,
                backends TEXT NOT NULL
            )
            """,
            "CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at BIGINT NOT NULL)",
        ]),
    ]

    /// Applies what is missing, in one transaction.
    static func migrate(_ client: PostgresClient, logger: Logger) async throws {
        try await client.withTransaction(logger: logger) { c in
            try await c.query("SELECT pg_advisory_xact_lock(7319001)", logger: logger)
            try await c.query("CREATE TABLE IF NOT EXISTS kiln_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
                              logger: logger)
            var applied = Set<String>()
            for try await name in try await c.query("SELECT name FROM kiln_migrations", logger: logger).decode(String.self) {
                applied.insert(name)
            }
            for m in all where !applied.contains(m.name) {
                for statement in m.sql { try await c.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
                try await c.query("INSERT INTO kiln_migrations (name, applied_at) VALUES (\(m.name), \(Millis.now()))", logger: logger)
                logger.notice("applied PostgreSQL migration \(m.name)")
            }
        }
    }
}
