import Foundation

/// B6: limits that hold, and history at scale. Figures, not asserts: the server's peak
/// memory during a flood, a trivial workload's answer time while another floods, the
/// database's size once retention has swept, and `/v1/stats` and filtered lists over a
/// million stored workloads.
extension Bench {
    func b6() -> [CaseResult] {
        [b6Flood(), b6TrivialDuringAFlood(), b6Retention(), b6History()]
    }

    static let terminal: Set<String> = ["completed", "failed", "killed"]

    /// Polls the record every `pollMs` until it is terminal; `each` runs before every poll.
    func pollTerminal(_ c: SimpleClient, _ id: String, timeoutSeconds: Double, pollMs: UInt32 = 100,
                      each: () -> Void = {}) throws -> [String: Any] {
        let deadline = monoNs() + UInt64(timeoutSeconds * 1e9)
        while monoNs() < deadline {
            each()
            let r = try record(c, id)
            if let s = r["status"] as? String, Bench.terminal.contains(s) { return r }
            usleep(pollMs * 1000)
        }
        throw WireError("workload \(id) not finished after \(timeoutSeconds) s")
    }

    /// The server's peak resident memory while one workload prints `lines` lines as fast as
    /// it can, above the idle server's; and the flood's wall time against the same output
    /// through a pipe that nobody stores.
    func b6Flood() -> CaseResult {
        let lines = cfg.quick ? 2_000_000 : cfg.b6FloodLines
        var res = CaseResult(benchmark: "B6", name: "flood of \(lines) lines")
        res.params = [("lines", .int(lines))]
        do {
            // The log cap (64 MiB by default) would end the stored log at about 9.7 million
            // of seq's lines: the figure is the memory of a flood that is stored whole.
            try withServer(["KILN_MAX_LOG_BYTES": "1073741824"]) { server, client in
                let idle = server.rssKiB()
                var peak = idle
                let t0 = monoNs()
                let id = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": "exec seq \(lines)",
                                                  "resources": ["timeout_s": 3600]])
                let rec = try pollTerminal(client, id, timeoutSeconds: 3600) { peak = max(peak, server.rssKiB()) }
                let wall = Double(monoNs() - t0) / 1e9
                let raw = try rawSeqThroughPipe(lines)
                res.metrics = [
                    Metric(name: "server peak RSS above idle", value: Double(peak - idle) / 1024, unit: "MiB", goal: .atMost(256)),
                    Metric(name: "flood, stored (submit to terminal record)", value: wall, unit: "s"),
                    Metric(name: "same output through a pipe, not stored", value: raw.seconds, unit: "s"),
                    Metric(name: "lines stored", value: Double(rec["log_lines"] as? Int ?? -1), unit: "lines", goal: .equals(Double(lines))),
                ]
                res.details = [("idle_rss_mib", .num(Double(idle) / 1024)), ("peak_rss_mib", .num(Double(peak) / 1024)),
                               ("workload_duration_ms", .num(Double(rec["duration_ms"] as? Int ?? -1)))]
                log("B6 flood: peak RSS +\(fmt(Double(peak - idle) / 1024)) MiB, \(fmt(wall)) s (pipe \(fmt(raw.seconds)) s)")
            }
        } catch {
            res.error = "\(error)"
            log("B6 flood failed: \(error)")
        }
        return res
    }

    /// `echo hi`, answered synchronously, alone and then while another workload floods: the
    /// ratio is what the flood costs everyone else (SPEC: its fair share of the store).
    func b6TrivialDuringAFlood() -> CaseResult {
        let runs = cfg.quick ? 30 : 200
        var res = CaseResult(benchmark: "B6", name: "echo hi during a flood")
        res.params = [("runs", .int(runs))]
        do {
            try withServer([:]) { _, client in
                func answerTimes() throws -> [Double] {
                    try (0..<runs).map { _ in
                        let t = monoNs()
                        let r = try client.postJSON("/v1/workloads", ["runtime": "shell", "isolation": "process", "code": "echo hi"])
                        guard r.status == 200 else { throw WireError("echo hi: \(r.status) \(r.text.prefix(200))") }
                        return ms(monoNs() - t)
                    }
                }
                let alone = try answerTimes()
                let flood = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": "exec seq 1000000000",
                                                     "resources": ["timeout_s": 3600]])
                // Measure once the flood is being stored.
                let deadline = monoNs() + 60_000_000_000
                while monoNs() < deadline, ((try? client.getJSON("/v1/workloads/\(flood)/logs/history?after=100000&limit=1"))?["lines"] as? [Any])?.isEmpty != false {
                    usleep(50_000)
                }
                let during = try answerTimes()
                let still = (try record(client, flood))["status"] as? String ?? "?"
                _ = try client.request("DELETE", "/v1/workloads/\(flood)")
                let (a50, a99, d50, d99) = (percentile(alone, 50), percentile(alone, 99), percentile(during, 50), percentile(during, 99))
                res.metrics = [
                    Metric(name: "alone p50", value: a50, unit: "ms"),
                    Metric(name: "alone p99", value: a99, unit: "ms"),
                    Metric(name: "during the flood p50", value: d50, unit: "ms"),
                    Metric(name: "during the flood p99", value: d99, unit: "ms"),
                    Metric(name: "p50 ratio (during / alone)", value: d50 / a50, unit: "×", goal: .atMost(2)),
                    Metric(name: "p99 ratio (during / alone)", value: d99 / a99, unit: "×", goal: .atMost(2)),
                ]
                res.details = [("flood_status_after", .str(still))]
                log("B6 echo hi: alone p50 \(fmt(a50)) p99 \(fmt(a99)) ms; during a flood p50 \(fmt(d50)) p99 \(fmt(d99)) ms")
            }
        } catch {
            res.error = "\(error)"
            log("B6 echo hi failed: \(error)")
        }
        return res
    }

    /// The database's size with one workload of `lines` lines stored, and once retention
    /// has swept it (incremental vacuum gives the pages back to the file system).
    func b6Retention() -> CaseResult {
        let lines = cfg.quick ? 200_000 : 1_000_000
        var res = CaseResult(benchmark: "B6", name: "retention sweep of \(lines) lines")
        res.params = [("lines", .int(lines)), ("retention", .str("5s"))]
        do {
            try withServer(["KILN_RETENTION": "5s"]) { server, client in
                func size() -> Double {
                    let names = ["kiln.db", "kiln.db-wal"]
                    let bytes = names.compactMap { try? FileManager.default.attributesOfItem(atPath: "\(server.dir)/\($0)")[.size] as? Int }
                    return Double(bytes.reduce(0, +)) / 1_048_576
                }
                let empty = size()
                let id = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": "exec seq \(lines)",
                                                  "resources": ["timeout_s": 600]])
                _ = try pollTerminal(client, id, timeoutSeconds: 600)
                let full = size()
                let t0 = monoNs()
                let deadline = t0 + 120_000_000_000
                while monoNs() < deadline, (try? client.request("GET", "/v1/workloads/\(id)").status) != 404 { usleep(200_000) }
                let swept = Double(monoNs() - t0) / 1e9
                // The space comes back after the sweep's vacuum steps and a checkpoint.
                var after = size()
                let settle = monoNs() + 30_000_000_000
                while monoNs() < settle, after > empty + 1 {
                    usleep(500_000)
                    after = size()
                }
                res.metrics = [
                    Metric(name: "database with the log", value: full, unit: "MiB"),
                    Metric(name: "database after the sweep", value: after, unit: "MiB"),
                    Metric(name: "new database", value: empty, unit: "MiB"),
                    Metric(name: "from finished to swept", value: swept, unit: "s"),
                ]
                log("B6 retention: \(fmt(full)) MiB with the log, \(fmt(after)) MiB after the sweep (\(fmt(empty)) MiB new)")
            }
        } catch {
            res.error = "\(error)"
            log("B6 retention failed: \(error)")
        }
        return res
    }

    /// `/v1/stats` and filtered lists over `count` stored workloads (written straight into
    /// the server's SQLite file by python3's sqlite3, so that the counters' triggers run as
    /// they do for the server's own writes).
    func b6History() -> CaseResult {
        let count = cfg.quick ? 100_000 : cfg.b6Workloads
        var res = CaseResult(benchmark: "B6", name: "history of \(count) workloads")
        res.params = [("workloads", .int(count)), ("samples_per_query", .int(20))]
        do {
            var dir = ""
            // A server makes the schema; then the rows go in while it is stopped.
            try withServerKeepingDir([:]) { server, _ in dir = server.dir }
            let t0 = monoNs()
            try fillWorkloads(db: dir + "/kiln.db", count: count)
            let fill = Double(monoNs() - t0) / 1e9
            log("B6 history: \(count) workloads written in \(fmt(fill)) s")
            let server = try KilnServer(binary: cfg.kiln, env: [:], reuseDir: dir)
            let client = SimpleClient(group: group, port: server.port)
            defer {
                client.close()
                server.stop()
                server.cleanup()
            }
            let middle = String(format: "%026d", count / 2)
            let queries: [(String, String)] = [
                ("stats", "/v1/stats"),
                ("newest 50", "/v1/workloads?limit=50"),
                ("status=failed", "/v1/workloads?status=failed&limit=50"),
                ("runtime=node&isolation=sandbox", "/v1/workloads?runtime=node&isolation=sandbox&limit=50"),
                ("tenant=team-c&status=killed", "/v1/workloads?tenant=team-c&status=killed&limit=50"),
                ("status=killed from the middle (cursor)", "/v1/workloads?status=killed&cursor=\(middle)&limit=50"),
            ]
            for (name, path) in queries {
                var samples: [Double] = []
                for _ in 0..<20 {
                    let t = monoNs()
                    let r = try client.request("GET", path)
                    guard r.status == 200 else { throw WireError("GET \(path): \(r.status) \(r.text.prefix(200))") }
                    samples.append(ms(monoNs() - t))
                }
                res.metrics.append(Metric(name: "\(name) p50", value: percentile(samples, 50), unit: "ms", goal: .atMost(10)))
                res.metrics.append(Metric(name: "\(name) max", value: samples.max() ?? .nan, unit: "ms"))
            }
            let stats = try client.getJSON("/v1/stats")
            res.details = [("fill_seconds", .num(fill)),
                           ("stats_total", .int(((stats["workloads"] as? [String: Any])?["total"] as? Int) ?? -1))]
        } catch {
            res.error = "\(error)"
            log("B6 history failed: \(error)")
        }
        return res
    }

    /// `withServer`, but the folder (and its database) stays for the caller.
    func withServerKeepingDir(_ env: [String: String], _ body: (KilnServer, SimpleClient) throws -> Void) throws {
        let server = try KilnServer(binary: cfg.kiln, env: env)
        let client = SimpleClient(group: group, port: server.port)
        defer {
            client.close()
            server.stop()
        }
        try body(server, client)
    }

    /// Writes `count` finished workloads (ids 0…count-1 as 26 digits, a valid ULID form)
    /// spread over statuses, runtimes, backends and four tenants.
    func fillWorkloads(db: String, count: Int) throws {
        let script = """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
            statuses = ['completed'] * 7 + ['failed'] * 2 + ['killed']
            runtimes = ['python', 'node', 'shell']
            backends = ['process', 'sandbox', 'gvisor', 'isolate']
            tenants = ['default', 'team-a', 'team-b', 'team-c']
            base = 1_700_000_000_000
            def rows():
                for i in range(n):
                    d = 5 + (i * 7919) % 3000
                    yield ('%026d' % i, statuses[i % 10], runtimes[i % 3], 'auto', backends[i % 4], 0, 'null', 1, 256, 30, i % 50, d,
                           base + i, base + i, base + i + d, tenants[i % 4])
            db.execute('BEGIN')
            db.executemany('INSERT INTO workloads (id, status, runtime, isolation, isolation_used, exit_code, output, cpus, mem_mb, '
                           'timeout_s, log_lines, duration_ms, created_at, started_at, finished_at, tenant) '
                           'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', rows())
            db.commit()
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, db, String(count)]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw WireError("filling \(db) failed (exit \(p.terminationStatus))") }
    }
}
