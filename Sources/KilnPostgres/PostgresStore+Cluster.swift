import Foundation
import KilnCore
import KilnStore
import NIOCore
import PostgresNIO

/// The queue, the nodes and the announcements of cluster mode.
extension PostgresStore {
    public func insertPending(_ r: WorkloadRecord, spec: StoredSpec) throws {
        let client = self.client, logger = self.logger
        let env = PostgresStore.encodeEnv(spec.env)
        let limit = spec.isolationLimit.map { $0.map(\.rawValue).sorted().joined(separator: ",") }
        try Blocking.run {
            try await client.withTransaction(logger: logger) { c in
                try await c.query(PostgresStore.insertQuery(r), logger: logger)
                try await c.query("""
                    INSERT INTO workload_specs (id, code, input, env, isolation_limit)
                    VALUES (\(r.id), \(ByteBuffer(string: spec.code)), \(spec.inputJSON), \(env), \(limit))
                    """, logger: logger)
                try await c.query("SELECT pg_notify(\(PostgresStore.channel), 'W')", logger: logger)
            }
        }
    }

    public func pendingCount() throws -> Int {
        try rows("SELECT count(*)::bigint FROM workloads WHERE status = 'pending'").first.map { Int(try $0.decode(Int64.self)) } ?? 0
    }

    /// One transaction: lock candidates oldest first (`FOR UPDATE SKIP LOCKED`, so workers
    /// claiming at once take different rows), pick within capacity and the tenants' share,
    /// resolve their backends here, and move them to `running` on this node.
    public func claim(node: String, limit: Int, explicit: [Isolation], autoRuntimes: [Runtime], tenantLimit: Int,
                      resolve: @escaping @Sendable (WorkloadRecord, StoredSpec) -> Isolation?) throws -> [ClaimedWorkload] {
        guard limit > 0 else { return [] }
        let client = self.client, logger = self.logger
        let explicitNames = explicit.map(\.rawValue), runtimes = autoRuntimes.map(\.rawValue)
        return try Blocking.run {
            try await client.withTransaction(logger: logger) { c in
                var candidates: [ClaimedWorkload] = []
                let scan = limit * 4 + 16
                for try await row in try await c.query("""
                    SELECT \(unescaped: PostgresStore.qualifiedColumns),
                        s.code, s.input, s.env, s.isolation_limit
                    FROM workloads w JOIN workload_specs s ON s.id = w.id
                    WHERE w.status = 'pending'
                      AND (w.isolation = ANY(\(explicitNames)::text[]) OR (w.isolation = 'auto' AND w.runtime = ANY(\(runtimes)::text[])))
                    ORDER BY w.id LIMIT \(scan)
                    FOR UPDATE OF w SKIP LOCKED
                    """, logger: logger) {
                    let r = row.makeRandomAccess()
                    let spec = StoredSpec(
                        code: String(buffer: try r["code"].decode(ByteBuffer.self)),
                        inputJSON: try r["input"].decode(String.self),
                        env: PostgresStore.decodeEnv(try r["env"].decode(String.self)),
                        isolationLimit: try r["isolation_limit"].decode(String?.self).map {
                            Set($0.split(separator: ",").compactMap { Isolation(rawValue: String($0)) })
                        })
                    candidates.append(ClaimedWorkload(record: try PostgresStore.record(row), spec: spec))
                }
                guard !candidates.isEmpty else { return [] }
                var running: [String: Int] = [:]
                for try await (tenant, n) in try await c.query("""
                    SELECT tenant, count(*)::bigint FROM workloads WHERE status = 'running' GROUP BY tenant
                    """, logger: logger).decode((String, Int64).self) {
                    running[tenant] = Int(n)
                }
                let now = Millis.now()
                var chosen: [ClaimedWorkload] = []
                for var cw in candidates where chosen.count < limit {
                    guard running[cw.record.tenant, default: 0] < tenantLimit, let backend = resolve(cw.record, cw.spec) else { continue }
                    running[cw.record.tenant, default: 0] += 1
                    cw.record.status = .running
                    cw.record.isolationUsed = backend
                    cw.record.startedAt = now
                    chosen.append(cw)
                }
                guard !chosen.isEmpty else { return [] }
                let ids = chosen.map(\.record.id), isos = chosen.map { $0.record.isolationUsed!.rawValue }
                try await c.query("""
                    UPDATE workloads w SET status = 'running', node = \(node), started_at = \(now), isolation_used = c.iso
                    FROM unnest(\(ids)::text[], \(isos)::text[]) AS c(id, iso)
                    WHERE w.id = c.id
                    """, logger: logger)
                return chosen
            }
        }
    }

    public func renewLease(_ n: NodeRecord) throws {
        try execute("""
            INSERT INTO nodes (name, role, state, capacity, running, lease_at, started_at, backends)
            VALUES (\(n.name), \(n.role), \(n.state), \(n.capacity), \(n.running), \(n.leaseAt), \(n.startedAt),
                    \(n.backends.joined(separator: ",")))
            ON CONFLICT (name) DO UPDATE SET role = excluded.role, state = excluded.state, capacity = excluded.capacity,
                running = excluded.running, lease_at = excluded.lease_at, started_at = excluded.started_at,
                backends = excluded.backends
            """)
    }

    public func setNodeState(_ name: String, _ state: String) throws {
        try execute("UPDATE nodes SET state = \(state) WHERE name = \(name)")
    }

    public func nodes() throws -> [NodeRecord] {
        try rows("SELECT name, role, state, capacity, running, lease_at, started_at, backends FROM nodes ORDER BY name").map { row in
            let (name, role, state, capacity, running, lease, started, backends) =
                try row.decode((String, String, String, Int, Int, Int64, Int64, String).self)
            return NodeRecord(name: name, role: role, state: state, capacity: capacity, running: running, leaseAt: lease,
                              startedAt: started, backends: backends.split(separator: ",").map(String.init))
        }
    }

    public func failLostNodes(leaseBefore: Int64, except: String, at now: Int64) throws -> [String] {
        let ids = try fail(where: """
            status = 'running' AND node <> $1 AND node IN (SELECT name FROM nodes WHERE lease_at < $2::bigint)
            """, error: "node lost", at: now, binds: [except, String(leaseBefore)])
        try execute("UPDATE nodes SET state = 'lost' WHERE state = 'live' AND lease_at < \(leaseBefore) AND name <> \(except)")
        return ids
    }

    public func failRunning(onNode node: String, error: String, at now: Int64) throws -> [String] {
        try fail(where: "status = 'running' AND node = $1", error: error, at: now, binds: [node])
    }

    public func announceKill(_ id: String) throws {
        try execute("SELECT pg_notify(\(PostgresStore.channel), \("K \(id)"))")
    }

    static func encodeEnv(_ env: [String: String]) -> String {
        (try? JSONSerialization.data(withJSONObject: env, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    static func decodeEnv(_ text: String) -> [String: String] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: String] ?? [:]
    }
}
