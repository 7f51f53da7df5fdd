import Foundation
import Histogram

/// A PostgreSQL 15 server for B7: `initdb` in a temp folder, `pg_ctl start` on a free
/// loopback port, as the `postgres` user when run as root (PostgreSQL refuses root).
final class PostgresInstance: @unchecked Sendable {
    static let bin = "/usr/lib/postgresql/15/bin"
    let dir: String
    let port: Int
    let password = "bench-\(UInt32.random(in: 1..<UInt32.max))"
    var url: String { "postgres://kiln:\(password)@127.0.0.1:\(port)/kiln" }

    static var available: Bool { FileManager.default.isExecutableFile(atPath: bin + "/pg_ctl") }

    init() throws {
        var template = Array("/tmp/kiln-bench-pg-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw WireError("mkdtemp failed") }
        dir = String(cString: p)
        port = PostgresInstance.freePort()
        try password.write(toFile: dir + "/pw", atomically: true, encoding: .utf8)
        if getuid() == 0 { _ = runTool(["/bin/chown", "-R", "postgres:postgres", dir], timeoutSeconds: 10) }
        try run(["\(PostgresInstance.bin)/initdb", "-D", dir + "/data", "-U", "kiln", "--pwfile", dir + "/pw",
                 "-A", "scram-sha-256", "-E", "UTF8"])
        try run(["\(PostgresInstance.bin)/pg_ctl", "-D", dir + "/data", "-l", dir + "/log", "-w", "-t", "60",
                 "-o", "-c listen_addresses=127.0.0.1 -p \(port) -k \(dir) -c max_connections=200", "start"])
        try run(["/usr/bin/env", "PGPASSWORD=\(password)", "\(PostgresInstance.bin)/psql", "-h", dir, "-p", "\(port)",
                 "-U", "kiln", "-d", "postgres", "-c", "CREATE DATABASE kiln"])
    }

    private func run(_ argv: [String]) throws {
        let full = getuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--"] + argv : argv
        let (status, out) = runTool(full, timeoutSeconds: 120)
        guard status == 0 else { throw WireError("\(argv[0]) exited \(status): \(out.suffix(500))") }
    }

    /// CPU seconds of every process of this server (the postmaster and its backends).
    func cpuSeconds() -> Double {
        guard let pidText = try? String(contentsOfFile: dir + "/data/postmaster.pid", encoding: .utf8),
              let master = Int32(pidText.split(separator: "\n").first ?? "") else { return .nan }
        var total = cpuSecondsOf(pid: master)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != master,
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            // Field 4 of stat is the parent pid; the third after ")".
            if fields.count > 1, Int32(fields[1]) == master { total += cpuSecondsOf(pid: pid) }
        }
        return total
    }

    func stop() {
        try? run(["\(PostgresInstance.bin)/pg_ctl", "-D", dir + "/data", "-m", "fast", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: dir)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// B7: cluster mode on this machine, against the single SQLite server. Every node, the
/// database, the workloads and the load generator share two cores, so the figures show
/// the cluster's overhead, not its gain.
extension Bench {
    func b7() -> [CaseResult] {
        guard PostgresInstance.available else {
            return [CaseResult(benchmark: "B7", name: "cluster", error: "PostgreSQL 15 is not installed (make deps installs it)")]
        }
        var out: [CaseResult] = []
        let runs = cfg.quick ? 300 : 2000
        out.append(b7Throughput(label: "single node, SQLite", workers: 0, runs: runs))
        out.append(b7Throughput(label: "cluster, 1 worker", workers: 1, runs: runs))
        out.append(b7Throughput(label: "cluster, 2 workers", workers: 2, runs: runs))
        out.append(b7FanOut(clustered: false))
        out.append(b7FanOut(clustered: true))
        out.append(b7Ingest())
        return out
    }

    /// An api node and `workers` worker nodes on a fresh PostgreSQL (0: one SQLite server).
    private func withCluster<T>(workers: Int, env: [String: String], _ body: (KilnServer, [KilnServer], PostgresInstance?) throws -> T) throws -> T {
        guard workers > 0 else {
            return try withServer(env) { server, _ in try body(server, [], nil) }
        }
        let pg = try PostgresInstance()
        defer { pg.stop() }
        var nodes: [KilnServer] = []
        defer { for n in nodes { n.stop(); n.cleanup() } }
        let api = try KilnServer(binary: cfg.kiln, name: "kiln-api", env: env.merging(["KILN_ROLE": "api", "KILN_NODE_NAME": "api"]) { $1 },
                                 db: pg.url)
        nodes.append(api)
        for i in 1...workers {
            nodes.append(try KilnServer(binary: cfg.kiln, name: "kiln-worker-\(i)",
                                        env: env.merging(["KILN_ROLE": "worker", "KILN_NODE_NAME": "worker-\(i)"]) { $1 }, db: pg.url))
        }
        return try body(api, Array(nodes.dropFirst()), pg)
    }

    /// `runs` trivial workloads submitted asynchronously on 16 connections, to the last one
    /// finished; and each one's submit-to-start latency (its record's `started_at` less its
    /// `created_at`, in milliseconds as stored).
    private func b7Throughput(label: String, workers: Int, runs: Int) -> CaseResult {
        var res = CaseResult(benchmark: "B7", name: label)
        res.params = [("workers", .int(workers)), ("runs", .int(runs)), ("max_concurrent_per_node", .int(8))]
        log("B7 \(label): \(runs) workloads")
        do {
            try withCluster(workers: workers, env: ["KILN_MAX_CONCURRENT": "8", "KILN_QUEUE_LIMIT": "100000"]) { api, _, pg in
                let body = Array(#"{"runtime":"shell","isolation":"process","code":"true"}"#.utf8)
                let ids = Locked<[String]>([])
                let pgCPU0 = pg?.cpuSeconds() ?? 0
                let t0 = monoNs()
                let g = DispatchGroup()
                for t in 0..<16 {
                    let n = runs / 16 + (t < runs % 16 ? 1 : 0)
                    g.enter()
                    let group = self.group
                    Thread {
                        let c = SimpleClient(group: group, port: api.port)
                        var mine: [String] = []
                        for _ in 0..<n {
                            if let r = try? c.request("POST", "/v1/workloads/async", body: body), r.status == 202,
                               let id = r.json()?["id"] as? String { mine.append(id) }
                        }
                        c.close()
                        ids.withLock { $0 += mine }
                        g.leave()
                    }.start()
                }
                g.wait()
                let submitted = ids.withLock { $0 }
                let client = SimpleClient(group: group, port: api.port)
                defer { client.close() }
                var finished = 0
                let deadline = monoNs() + 600_000_000_000
                while finished < submitted.count && monoNs() < deadline {
                    let w = (try? client.getJSON("/v1/stats"))?["workloads"] as? [String: Any]
                    finished = ["completed", "failed", "killed"].compactMap { w?[$0] as? Int }.reduce(0, +)
                    if finished < submitted.count { usleep(20_000) }
                }
                let wall = Double(monoNs() - t0) / 1e9
                var latencies: [Double] = []
                var cursor: String? = nil
                let iso = ISO8601DateFormatter()
                iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
                repeat {
                    let page = try client.getJSON("/v1/workloads?limit=500" + (cursor.map { "&cursor=\($0)" } ?? ""))
                    for r in page["workloads"] as? [[String: Any]] ?? [] {
                        if let c = (r["created_at"] as? String).flatMap(iso.date), let s = (r["started_at"] as? String).flatMap(iso.date) {
                            latencies.append(s.timeIntervalSince(c) * 1000)
                        }
                    }
                    cursor = page["next_cursor"] as? String
                } while cursor != nil
                res.metrics = [
                    Metric(name: "workloads/s", value: Double(finished) / wall, unit: "1/s"),
                    Metric(name: "submit-to-start p50", value: percentile(latencies, 50), unit: "ms"),
                    Metric(name: "submit-to-start p99", value: percentile(latencies, 99), unit: "ms"),
                    Metric(name: "unfinished workloads", value: Double(submitted.count - finished), unit: "runs", goal: .equals(0)),
                ]
                res.details = [("submitted", .int(submitted.count)), ("wall_s", .num(wall)),
                               ("postgres_cpu_s", .num((pg?.cpuSeconds() ?? 0) - pgCPU0))]
            }
        } catch {
            res.error = "\(error)"
        }
        return res
    }

    /// S=1000 subscribers on the api node of a workload that prints 1,000 lines/s on a worker
    /// (or, `clustered` false, on one SQLite server): publish-to-receive latency.
    private func b7FanOut(clustered: Bool) -> CaseResult {
        let subs = cfg.quick ? 200 : 1000, rate = 1000, lines = cfg.quick ? 2000 : 10_000
        var res = CaseResult(benchmark: "B7", name: clustered ? "fan-out across nodes S=\(subs) R=\(rate)" : "fan-out on one node S=\(subs) R=\(rate)")
        res.params = [("subscribers", .int(subs)), ("rate_lines_per_s", .int(rate)), ("lines", .int(lines))]
        log("B7 \(res.name)")
        do {
            try withCluster(workers: clustered ? 1 : 0, env: ["KILN_MAX_CONCURRENT": "8"]) { api, workers, pg in
                let client = SimpleClient(group: group, port: api.port)
                defer { client.close() }
                let go = (workers.first ?? api).dir + "/go-b7"
                let code = Bench.paceCode(go: go, lines: lines, rate: rate)
                let id = try submitAsync(client, ["runtime": "python", "isolation": "process", "code": code, "resources": ["timeout_s": 900]])
                let fleet = try SubscriberFleet(port: api.port, path: "/v1/workloads/\(id)/logs?tail=0", count: subs, mode: .fanout,
                                                expectedLines: lines, perProcess: cfg.perProcess, loops: cfg.loops,
                                                deadlineSeconds: Double(lines) / Double(rate) + 300)
                defer { fleet.stop() }
                let (ok, _) = try fleet.waitConnected(timeoutSeconds: 180)
                try waitSubscribers(client, ok, timeoutSeconds: 120)
                let pgCPU0 = pg?.cpuSeconds() ?? 0
                touch(go)
                let rep = fleet.report(ask: false, timeoutSeconds: Double(lines) / Double(rate) + 360)
                let pgCPU = (pg?.cpuSeconds() ?? 0) - pgCPU0
                res.metrics.append(Metric(name: "events delivered", value: Double(rep.events), unit: "events", goal: .equals(Double(subs * lines))))
                res.metrics += latencyMetrics(rep.hist, p99Target: nil)
                res.metrics.append(Metric(name: "lost lines", value: Double(rep.lost), unit: "lines", goal: .equals(0)))
                res.metrics.append(Metric(name: "out-of-order lines", value: Double(rep.outOfOrder), unit: "lines", goal: .equals(0)))
                if pg != nil {
                    res.metrics.append(Metric(name: "PostgreSQL CPU per 1,000 lines", value: pgCPU * 1000 * 1000 / Double(lines), unit: "ms"))
                }
                res.details = [("workload_id", .str(id)), ("connected", .int(ok)), ("postgres_cpu_s", .num(pgCPU)),
                               ("errors", .arr(rep.errors.map { .str($0) }))]
            }
        } catch {
            res.error = "\(error)"
        }
        return res
    }

    /// One workload on a worker printing lines as fast as it can, one subscriber on the api
    /// node: PostgreSQL's CPU per 1,000 stored lines when nothing paces the writer.
    private func b7Ingest() -> CaseResult {
        let lines = cfg.quick ? 100_000 : 500_000
        var res = CaseResult(benchmark: "B7", name: "ingest of \(lines) lines on a worker")
        res.params = [("lines", .int(lines))]
        log("B7 \(res.name)")
        do {
            try withCluster(workers: 1, env: [:]) { api, _, pg in
                let client = SimpleClient(group: group, port: api.port)
                defer { client.close() }
                let cpu0 = pg!.cpuSeconds()
                let t0 = monoNs()
                let id = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": "seq 1 \(lines)",
                                                  "resources": ["timeout_s": 900]])
                let rec = try waitTerminal(client, id, timeoutSeconds: 600, pollMs: 100)
                let wall = Double(monoNs() - t0) / 1e9
                let cpu = pg!.cpuSeconds() - cpu0
                res.metrics = [
                    Metric(name: "stored lines", value: Double(rec["log_lines"] as? Int ?? -1), unit: "lines", goal: .equals(Double(lines))),
                    Metric(name: "lines/s", value: Double(lines) / wall, unit: "1/s"),
                    Metric(name: "PostgreSQL CPU per 1,000 lines", value: cpu * 1000 * 1000 / Double(lines), unit: "ms"),
                ]
                res.details = [("postgres_cpu_s", .num(cpu)), ("wall_s", .num(wall))]
            }
        } catch {
            res.error = "\(error)"
        }
        return res
    }
}
