import Atomics
import Foundation
import Histogram
import NIOCore
import NIOPosix

struct BenchConfig {
    var kiln = ""
    /// B5: the peer server's binary (`kiln-peer`).
    var peer = ""
    var quick = false
    // B1
    var b1Seconds = 10.0
    var b1MaxLines = 20_000
    var b1Cases: [String] = ["s1000-r1000", "s10000-r100", "s1000-rmax"]
    // B2
    var b2Streams = 19_000
    var b2HoldSeconds = 30.0
    var b2Heartbeat = 5
    var b2HealthIntervalMs = 100
    // B3
    var b3Runs1 = 500
    var b3Runs16 = 2_000
    // B4
    var b4Lines = 1_000_000
    // B6
    var b6FloodLines = 20_000_000
    var b6Workloads = 1_000_000
    // B5 (its B1 and B2 parts use the B1 and B2 settings)
    var b5WrkSeconds = 10
    var b5WrkConnections = 64
    var b5WrkThreads = 2
    // Subscribers per worker process (each holds one fd per stream; the limit is 20,000).
    var perProcess = 9_500
    var loops: Int? = nil
    /// Seconds to wait for an idle machine before each benchmark (B1: before each case).
    var waitIdle = 120.0
}

/// Runs the benchmarks against servers it starts and stops itself.
final class Bench: @unchecked Sendable {
    let cfg: BenchConfig
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    init(_ cfg: BenchConfig) { self.cfg = cfg }

    deinit { try? group.syncShutdownGracefully() }

    // MARK: helpers

    /// Starts a server (Kiln unless `binary` says otherwise: B5's peer), runs `body`, stops it.
    func withServer<T>(_ env: [String: String], binary: String? = nil, name: String = "kiln",
                       _ body: (KilnServer, SimpleClient) throws -> T) throws -> T {
        let server = try KilnServer(binary: binary ?? cfg.kiln, name: name, env: env)
        let client = SimpleClient(group: group, port: server.port)
        defer {
            client.close()
            server.stop()
            server.cleanup()
        }
        return try body(server, client)
    }

    func submitAsync(_ c: SimpleClient, _ body: [String: Any]) throws -> String {
        let r = try c.postJSON("/v1/workloads/async", body)
        guard r.status == 202, let id = r.json()?["id"] as? String else {
            throw WireError("submit: \(r.status) \(r.text.prefix(300))")
        }
        return id
    }

    func sseSubscribers(_ c: SimpleClient) -> Int {
        ((try? c.getJSON("/v1/stats"))?["sse_subscribers"] as? Int) ?? -1
    }

    /// Polls /v1/stats until the server counts `n` live streams.
    func waitSubscribers(_ c: SimpleClient, _ n: Int, timeoutSeconds: Double) throws {
        let deadline = monoNs() + UInt64(timeoutSeconds * 1e9)
        var seen = -1
        while monoNs() < deadline {
            seen = sseSubscribers(c)
            if seen >= n { return }
            usleep(100_000)
        }
        throw WireError("server counts \(seen) SSE subscribers, expected \(n)")
    }

    func record(_ c: SimpleClient, _ id: String) throws -> [String: Any] {
        try c.getJSON("/v1/workloads/\(id)")
    }

    func waitTerminal(_ c: SimpleClient, _ id: String, timeoutSeconds: Double, pollMs: UInt32 = 50) throws -> [String: Any] {
        let deadline = monoNs() + UInt64(timeoutSeconds * 1e9)
        while monoNs() < deadline {
            let r = try record(c, id)
            if let s = r["status"] as? String, ["completed", "failed", "killed"].contains(s) { return r }
            usleep(pollMs * 1000)
        }
        throw WireError("workload \(id) not finished after \(timeoutSeconds) s")
    }

    func touch(_ path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data())
    }

    func latencyMetrics(_ h: Histogram<UInt64>, p99Target: Double?) -> [Metric] {
        guard h.totalCount > 0 else {
            return [Metric(name: "latency p50", value: .nan, unit: "ms"),
                    Metric(name: "latency p99", value: .nan, unit: "ms", goal: p99Target.map { .atMost($0) })]
        }
        return [
            Metric(name: "latency p50", value: Double(h.valueAtPercentile(50)) / 1000, unit: "ms"),
            Metric(name: "latency p99", value: Double(h.valueAtPercentile(99)) / 1000, unit: "ms", goal: p99Target.map { .atMost($0) }),
            Metric(name: "latency max", value: Double(h.max) / 1000, unit: "ms"),
        ]
    }

    // MARK: B1 fan-out

    /// A python workload that waits for `go`, then prints "<seq> <time_ns>" N times at R lines/s
    /// (as fast as it can when R is 0), each line in one write.
    static func paceCode(go: String, lines: Int, rate: Int) -> String {
        """
        import os, time
        go = \(JV.quote(go))
        give_up = time.time() + 300
        while not os.path.exists(go):
            if time.time() > give_up:
                raise SystemExit(3)
            time.sleep(0.001)
        N, R = \(lines), \(rate)
        w, now = os.write, time.time_ns
        if R > 0:
            mono, sleep = time.monotonic, time.sleep
            t0 = mono()
            for i in range(1, N + 1):
                d = t0 + (i - 1) / R - mono()
                if d > 0:
                    sleep(d)
                w(1, b"%d %d\\n" % (i, now()))
        else:
            for i in range(1, N + 1):
                w(1, b"%d %d\\n" % (i, now()))
        """
    }

    /// One B1 case: S subscribers, R lines/s (0: as fast as it can), the issue's targets if any.
    struct B1Spec { var key: String; var subs: Int; var rate: Int; var lines: Int; var p99: Double?; var minEvents: Double? }

    func b1() -> [CaseResult] {
        b1Run(b1Specs(cfg.b1Cases, quick: cfg.quick, seconds: cfg.b1Seconds), binary: cfg.kiln, name: "kiln")
    }

    /// The cases named `s<S>-r<R|max>`; `quick` shrinks them (S / 10 and 2 s, or 200 and 2,000 lines for R=max).
    func b1Specs(_ keys: [String], quick q: Bool, seconds: Double) -> [B1Spec] {
        typealias Spec = B1Spec
        var specs: [Spec] = []
        for key in keys {
            // "s<subscribers>-r<lines per second|max>"; the issue's three cases carry its targets.
            let parts = key.lowercased().split(separator: "-")
            guard parts.count == 2, parts[0].hasPrefix("s"), parts[1].hasPrefix("r"),
                  var subs = Int(parts[0].dropFirst()) else {
                log("unknown B1 case \(key) (use s<subscribers>-r<rate|max>, e.g. s1000-r1000)")
                continue
            }
            let rateText = parts[1].dropFirst()
            if rateText == "max" {
                let official = subs == 1000
                if q { subs = min(subs, 200) }
                specs.append(Spec(key: "S=\(subs) R=max", subs: subs, rate: 0, lines: q ? 2000 : cfg.b1MaxLines,
                                  p99: nil, minEvents: official ? 1_000_000 : nil))
            } else if let rate = Int(rateText), rate > 0 {
                let p99: Double? = (subs, rate) == (1000, 1000) ? 10 : (subs, rate) == (10_000, 100) ? 50 : nil
                if q { subs = max(1, subs / 10) }
                specs.append(Spec(key: "S=\(subs) R=\(rate)", subs: subs, rate: rate,
                                  lines: Int(Double(rate) * (q ? 2 : seconds)), p99: p99, minEvents: nil))
            } else {
                log("unknown B1 case \(key)")
            }
        }
        return specs
    }

    /// Runs B1 cases one after the other against one server (`binary`: Kiln, or B5's peer).
    func b1Run(_ specs: [B1Spec], binary: String, name: String) -> [CaseResult] {
        var out: [CaseResult] = []
        do {
            try withServer(["KILN_MAX_CONCURRENT": "32"], binary: binary, name: name) { server, client in
                for (n, spec) in specs.enumerated() {
                    let busy = n > 0 && cfg.waitIdle > 0 ? waitForQuietMachine(maxSeconds: cfg.waitIdle) : -1
                    log("B1 \(spec.key): \(spec.lines) lines to \(spec.subs) subscribers")
                    var res = CaseResult(benchmark: "B1", name: spec.key)
                    res.params = [("subscribers", .int(spec.subs)), ("rate_lines_per_s", spec.rate > 0 ? .int(spec.rate) : .str("max")),
                                  ("lines", .int(spec.lines))]
                    do {
                        try b1Case(server, client, spec.subs, spec.rate, spec.lines, p99: spec.p99, minEvents: spec.minEvents,
                                   go: server.dir + "/go-b1-\(n)", into: &res)
                    } catch {
                        res.error = "\(error)"
                        log("B1 \(spec.key) failed: \(error)")
                    }
                    if busy >= 0 { res.details.append(("machine_busy_before_case", .num(busy))) }
                    out.append(res)
                }
            }
        } catch {
            out.append(CaseResult(benchmark: "B1", name: "server", error: "\(error)"))
        }
        return out
    }

    private func b1Case(_ server: KilnServer, _ client: SimpleClient, _ subs: Int, _ rate: Int, _ lines: Int,
                        p99: Double?, minEvents: Double?, go: String, into res: inout CaseResult) throws {
        let code = Bench.paceCode(go: go, lines: lines, rate: rate)
        let id = try submitAsync(client, ["runtime": "python", "isolation": "process", "code": code,
                                          "resources": ["timeout_s": 900]])
        let expectedSeconds = rate > 0 ? Double(lines) / Double(rate) : 60
        let fleet = try SubscriberFleet(port: server.port, path: "/v1/workloads/\(id)/logs?tail=0", count: subs,
                                        mode: .fanout, expectedLines: lines, perProcess: cfg.perProcess,
                                        loops: cfg.loops, deadlineSeconds: expectedSeconds + 300)
        defer { fleet.stop() }
        let (ok, failed) = try fleet.waitConnected(timeoutSeconds: 180)
        try waitSubscribers(client, ok, timeoutSeconds: 120)
        let rssBefore = server.rssKiB()
        let cpu0 = server.cpuSeconds()
        let m0 = machineTicks()
        let goNs = realtimeNs()
        touch(go)
        let rep = fleet.report(ask: false, timeoutSeconds: expectedSeconds + 360)
        let serverCPU = server.cpuSeconds() - cpu0
        let m1 = machineTicks()
        // Everything the machine did meanwhile (server, workload, load generator, anything else).
        let machineCPU = Double(m1.busy - m0.busy) / Double(sysconf(Int32(_SC_CLK_TCK)))
        let rec = try waitTerminal(client, id, timeoutSeconds: 120)
        let logLines = rec["log_lines"] as? Int ?? -1
        let durationMs = rec["duration_ms"] as? Double ?? Double(rec["duration_ms"] as? Int ?? 0)
        let span = rep.lastEventNs > rep.firstEventNs ? Double(rep.lastEventNs - rep.firstEventNs) / 1e9 : .nan
        let eventsPerS = Double(rep.events) / span
        res.metrics.append(Metric(name: "events delivered", value: Double(rep.events), unit: "events", goal: .equals(Double(subs * lines))))
        res.metrics.append(Metric(name: "delivered rate", value: eventsPerS, unit: "events/s", goal: minEvents.map { .atLeast($0) }))
        res.metrics += latencyMetrics(rep.hist, p99Target: p99)
        res.metrics.append(Metric(name: "lost lines", value: Double(rep.lost), unit: "lines", goal: .equals(0)))
        res.metrics.append(Metric(name: "out-of-order lines", value: Double(rep.outOfOrder), unit: "lines", goal: .equals(0)))
        // How fast the workload printed: lines over its own run time (includes waiting for `go`: small).
        let publishSpan = Double(max(1, Int(rep.firstEventNs) - Int(goNs))) / 1e9
        res.details = [
            ("workload_id", .str(id)), ("workload_status", .str(rec["status"] as? String ?? "?")),
            ("workload_log_lines", .int(logLines)), ("workload_duration_ms", .num(durationMs)),
            ("publish_rate_lines_per_s", .num(rate > 0 ? Double(rate) : Double(lines) / max(0.001, durationMs / 1000))),
            ("delivery_span_s", .num(span)), ("go_to_first_event_s", .num(publishSpan)),
            ("connected", .int(ok)), ("connect_failed", .int(failed)), ("streams_complete", .int(rep.streamsComplete)),
            ("streams_ended", .int(rep.ended)), ("closed_without_end", .int(rep.closedEarly)), ("non_200", .int(rep.non200)),
            ("gaps", .int(rep.gaps)), ("bad_lines", .int(rep.badLines)), ("bytes_received", .int(rep.bytes)),
            ("server_rss_kib_before", .int(rssBefore)), ("server_rss_kib_after", .int(server.rssKiB())),
            ("server_cpu_s_during_delivery", .num(serverCPU)), ("load_generator_cpu_s", .num(rep.cpuSeconds)),
            ("machine_cpu_s_during_delivery", .num(machineCPU)),
            ("other_cpu_s_during_delivery", .num(machineCPU - serverCPU - rep.cpuSeconds)),
            ("worker_processes", .int(fleet.workers.count)), ("errors", .arr(rep.errors.map { .str($0) })),
        ]
        log("B1 done: \(rep.events) events in \(String(format: "%.2f", span)) s = \(fmt(eventsPerS))/s, p99 \(fmt(Double(rep.hist.valueAtPercentile(99)) / 1000)) ms, lost \(rep.lost)")
    }

    // MARK: B2 idle streams

    func b2() -> [CaseResult] {
        b2Run(streams: cfg.quick ? 1000 : cfg.b2Streams, hold: cfg.quick ? 6.0 : cfg.b2HoldSeconds,
              beat: cfg.quick ? 2 : cfg.b2Heartbeat, binary: cfg.kiln, name: "kiln")
    }

    /// B2 against one server (`binary`: Kiln, or B5's peer).
    func b2Run(streams: Int, hold: Double, beat: Int, binary: String, name: String) -> [CaseResult] {
        var res = CaseResult(benchmark: "B2", name: "\(streams) idle streams")
        res.params = [("streams", .int(streams)), ("hold_s", .num(hold)), ("heartbeat_s", .int(beat)),
                      ("health_probe_interval_ms", .int(cfg.b2HealthIntervalMs))]
        do {
            try withServer(["KILN_HEARTBEAT_S": "\(beat)", "KILN_MAX_CONCURRENT": "32"], binary: binary, name: name) { server, client in
                let stop = server.dir + "/stop-b2"
                // A workload that prints nothing until it is told to stop (bounded: 15 min).
                let code = "i=0; while [ ! -e \(stop) ] && [ $i -lt 9000 ]; do sleep 0.1; i=$((i+1)); done"
                let id = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": code,
                                                  "resources": ["timeout_s": 1200]])
                // Settle, then the baseline RSS: the server with its workload running and no stream.
                for _ in 0..<20 { _ = try? client.request("GET", "/healthz") }
                usleep(500_000)
                let rssBefore = server.rssKiB()
                let fdsBefore = server.openFDs()
                let prober = HealthProber(group: group, port: server.port, intervalMs: cfg.b2HealthIntervalMs)
                prober.start(phase: "connect")
                let t0 = monoNs()
                let fleet = try SubscriberFleet(port: server.port, path: "/v1/workloads/\(id)/logs?tail=0", count: streams,
                                                mode: .idle, expectedLines: 0, perProcess: cfg.perProcess,
                                                loops: cfg.loops ?? 1, deadlineSeconds: hold + 600)
                defer { fleet.stop() }
                let (ok, failed) = try fleet.waitConnected(timeoutSeconds: 300)
                try waitSubscribers(client, ok, timeoutSeconds: 180)
                let connectSeconds = Double(monoNs() - t0) / 1e9
                log("B2: \(ok) streams open in \(String(format: "%.1f", connectSeconds)) s (\(failed) failed); holding \(hold) s")
                prober.phase = "hold"
                fleet.mark()
                let cpuHold0 = server.cpuSeconds()
                let holdEnd = monoNs() + UInt64(hold * 1e9)
                var rssPeak = 0
                while monoNs() < holdEnd {
                    rssPeak = max(rssPeak, server.rssKiB())
                    usleep(500_000)
                }
                let rssAfter = server.rssKiB()
                let holdCPU = server.cpuSeconds() - cpuHold0
                let fdsAfter = server.openFDs()
                let subsAfter = sseSubscribers(client)
                prober.phase = "end"
                // Let the workload end: every stream should get its `end` and close.
                touch(stop)
                let rep = fleet.report(ask: false, timeoutSeconds: 120)
                prober.stop()
                let rec = try waitTerminal(client, id, timeoutSeconds: 60)
                let perStream = Double(rssAfter - rssBefore) * 1024 / Double(max(1, ok))
                let expectedBeats = Int(hold / Double(beat))
                res.metrics.append(Metric(name: "streams held", value: Double(subsAfter), unit: "streams", goal: .atLeast(Double(streams))))
                res.metrics.append(Metric(name: "RSS per stream", value: perStream, unit: "bytes", goal: .atMost(8192)))
                res.metrics.append(Metric(name: "streams without heartbeat", value: Double(rep.streamsWithoutHeartbeat), unit: "streams", goal: .equals(0)))
                res.metrics.append(Metric(name: "heartbeats min per stream", value: Double(rep.heartbeatsMin), unit: "beats", goal: .atLeast(Double(max(1, expectedBeats - 1)))))
                res.metrics.append(Metric(name: "max heartbeat gap", value: rep.maxHeartbeatGapMs, unit: "ms", goal: .atMost(Double(beat) * 2000)))
                let all = prober.latencies(nil)
                res.metrics.append(Metric(name: "/healthz p50", value: percentile(all, 50), unit: "ms"))
                res.metrics.append(Metric(name: "/healthz p99", value: percentile(all, 99), unit: "ms", goal: .atMost(20)))
                res.metrics.append(Metric(name: "/healthz max", value: all.max() ?? .nan, unit: "ms"))
                res.metrics.append(Metric(name: "/healthz failures", value: Double(prober.failures), unit: "requests", goal: .equals(0)))
                res.metrics.append(Metric(name: "streams ended cleanly", value: Double(rep.ended), unit: "streams", goal: .atLeast(Double(streams))))
                var phases: [(String, JV)] = []
                for ph in ["connect", "hold", "end"] {
                    let l = prober.latencies(ph)
                    phases.append((ph, .obj([("count", .int(l.count)), ("p50_ms", .num(percentile(l, 50))),
                                             ("p99_ms", .num(percentile(l, 99))), ("max_ms", .num(l.max() ?? .nan))])))
                }
                res.details = [
                    ("workload_id", .str(id)), ("workload_status", .str(rec["status"] as? String ?? "?")),
                    ("connected", .int(ok)), ("connect_failed", .int(failed)), ("connect_seconds", .num(connectSeconds)),
                    ("server_rss_kib_before", .int(rssBefore)), ("server_rss_kib_after", .int(rssAfter)),
                    ("server_rss_kib_peak_during_hold", .int(rssPeak)),
                    ("server_fds_before", .int(fdsBefore)), ("server_fds_after", .int(fdsAfter)),
                    ("server_cpu_s_during_hold", .num(holdCPU)),
                    ("heartbeats_max_per_stream", .int(rep.heartbeatsMax)), ("heartbeats_total", .int(rep.heartbeatsTotal)),
                    ("expected_heartbeats_per_stream", .int(expectedBeats)),
                    ("closed_without_end", .int(rep.closedEarly)), ("non_200", .int(rep.non200)),
                    ("healthz_by_phase", .obj(phases)), ("worker_processes", .int(fleet.workers.count)),
                    ("errors", .arr(rep.errors.map { .str($0) })),
                ]
            }
        } catch {
            res.error = "\(error)"
            log("B2 failed: \(error)")
        }
        return [res]
    }

    // MARK: B3 throughput

    func b3() -> [CaseResult] {
        var out: [CaseResult] = []
        let body = Array(#"{"runtime":"shell","isolation":"process","code":"true"}"#.utf8)
        do {
            try withServer(["KILN_MAX_CONCURRENT": "32", "KILN_QUEUE_LIMIT": "1000"]) { server, _ in
                for (conc, runs) in [(1, cfg.quick ? 50 : cfg.b3Runs1), (16, cfg.quick ? 160 : cfg.b3Runs16)] {
                    log("B3 concurrency \(conc): \(runs) synchronous shell workloads, then \(runs) raw sh -c true")
                    var res = CaseResult(benchmark: "B3", name: "concurrency \(conc)")
                    res.params = [("concurrency", .int(conc)), ("runs", .int(runs)), ("workload", .str(String(decoding: body, as: UTF8.self)))]
                    do {
                        let cpu0 = server.cpuSeconds()
                        let (kl, kwall, bad) = try kilnRuns(port: server.port, body: body, count: runs, concurrency: conc)
                        let cpuPerRun = (server.cpuSeconds() - cpu0) * 1000 / Double(runs + 10)
                        let (rl, rwall) = rawSpawnRuns(count: runs, concurrency: conc)
                        let kp50 = percentile(kl, 50), rp50 = percentile(rl, 50)
                        res.metrics = [
                            Metric(name: "kiln workloads/s", value: Double(runs) / kwall, unit: "1/s"),
                            Metric(name: "kiln p50", value: kp50, unit: "ms"),
                            Metric(name: "kiln p99", value: percentile(kl, 99), unit: "ms"),
                            Metric(name: "raw sh -c true/s", value: Double(runs) / rwall, unit: "1/s"),
                            Metric(name: "raw p50", value: rp50, unit: "ms"),
                            Metric(name: "overhead at p50", value: kp50 - rp50, unit: "ms", goal: .atMost(2)),
                            Metric(name: "failed workloads", value: Double(bad), unit: "runs", goal: .equals(0)),
                        ]
                        res.details = [("kiln_wall_s", .num(kwall)), ("raw_wall_s", .num(rwall)),
                                       ("server_cpu_ms_per_workload", .num(cpuPerRun)),
                                       ("raw_p99_ms", .num(percentile(rl, 99)))]
                    } catch {
                        res.error = "\(error)"
                    }
                    out.append(res)
                }
            }
        } catch {
            out.append(CaseResult(benchmark: "B3", name: "server", error: "\(error)"))
        }
        return out
    }

    /// `count` synchronous POSTs on `concurrency` keep-alive connections.
    private func kilnRuns(port: Int, body: [UInt8], count: Int, concurrency: Int) throws -> ([Double], Double, Int) {
        // Warm up (first spawns, SQLite pages).
        let warm = SimpleClient(group: group, port: port)
        for _ in 0..<10 { _ = try warm.request("POST", "/v1/workloads", body: body) }
        warm.close()
        struct Acc { var all: [Double] = []; var bad = 0; var firstError: Error? }
        let acc = Locked(Acc())
        let g = DispatchGroup()
        let t0 = monoNs()
        for t in 0..<concurrency {
            let n = count / concurrency + (t < count % concurrency ? 1 : 0)
            g.enter()
            let group = self.group
            Thread {
                let c = SimpleClient(group: group, port: port)
                var mine: [Double] = []
                var myBad = 0
                var err: Error?
                for _ in 0..<n {
                    let s = monoNs()
                    do {
                        let r = try c.request("POST", "/v1/workloads", body: body)
                        mine.append(ms(monoNs() - s))
                        if r.status != 200 || !r.text.contains("\"status\":\"completed\"") { myBad += 1 }
                    } catch {
                        err = error
                        myBad += 1
                    }
                }
                c.close()
                acc.withLock { a in
                    a.all += mine
                    a.bad += myBad
                    if a.firstError == nil { a.firstError = err }
                }
                g.leave()
            }.start()
        }
        g.wait()
        let wall = Double(monoNs() - t0) / 1e9
        let a = acc.withLock { $0 }
        if let e = a.firstError, a.all.isEmpty { throw e }
        return (a.all, wall, a.bad)
    }

    // MARK: B4 log ingest

    func b4() -> [CaseResult] {
        let lines = cfg.quick ? 100_000 : cfg.b4Lines
        var res = CaseResult(benchmark: "B4", name: "seq \(lines)")
        res.params = [("lines", .int(lines)), ("subscribers", .int(1))]
        do {
            try withServer(["KILN_MAX_CONCURRENT": "32"]) { server, client in
                let go = server.dir + "/go-b4"
                let code = "i=0; while [ ! -e \(go) ] && [ $i -lt 30000 ]; do sleep 0.01; i=$((i+1)); done; exec seq \(lines)"
                let id = try submitAsync(client, ["runtime": "shell", "isolation": "process", "code": code,
                                                  "resources": ["timeout_s": 600]])
                let fleet = try SubscriberFleet(port: server.port, path: "/v1/workloads/\(id)/logs", count: 1,
                                                mode: .ingest, expectedLines: lines, perProcess: cfg.perProcess,
                                                loops: 1, deadlineSeconds: 300)
                defer { fleet.stop() }
                _ = try fleet.waitConnected(timeoutSeconds: 30)
                try waitSubscribers(client, 1, timeoutSeconds: 30)
                let cpu0 = server.cpuSeconds()
                let goReal = realtimeNs()
                let goMono = monoNs()
                touch(go)
                // Poll the record until it is terminal with every line stored.
                var storedSeconds = Double.nan
                var rec: [String: Any] = [:]
                var polls = 0
                let deadline = goMono + 300_000_000_000
                while monoNs() < deadline {
                    rec = try record(client, id)
                    polls += 1
                    let st = rec["status"] as? String ?? ""
                    if ["completed", "failed", "killed"].contains(st) {
                        if rec["log_lines"] as? Int == lines { storedSeconds = Double(monoNs() - goMono) / 1e9 }
                        break
                    }
                    usleep(10_000)
                }
                let serverCPU = server.cpuSeconds() - cpu0
                let rep = fleet.report(ask: false, timeoutSeconds: 300)
                let deliveredSeconds = rep.streamsComplete == 1 && rep.lastStreamDoneNs > goReal
                    ? Double(rep.lastStreamDoneNs - goReal) / 1e9 : .nan
                let endSeconds = rep.lastEndNs > goReal ? Double(rep.lastEndNs - goReal) / 1e9 : .nan
                let raw = try rawSeqThroughPipe(lines)
                // The workload waits for the go file in steps of 10 ms, and the record is polled
                // every 10 ms: up to about 20 ms of the figures is polling, not ingest.
                res.metrics = [
                    Metric(name: "stored and delivered", value: max(storedSeconds, deliveredSeconds), unit: "s", goal: .atMost(2)),
                    Metric(name: "time to stored", value: storedSeconds, unit: "s"),
                    Metric(name: "time to last line received", value: deliveredSeconds, unit: "s"),
                    Metric(name: "time to end event", value: endSeconds, unit: "s"),
                    Metric(name: "raw seq | pipe", value: raw.seconds, unit: "s"),
                    Metric(name: "lines stored", value: Double(rec["log_lines"] as? Int ?? -1), unit: "lines", goal: .equals(Double(lines))),
                    Metric(name: "lines delivered", value: Double(rep.events), unit: "lines", goal: .equals(Double(lines))),
                    Metric(name: "lost or out of order", value: Double(rep.lost + rep.outOfOrder), unit: "lines", goal: .equals(0)),
                ]
                res.details = [
                    ("workload_id", .str(id)), ("workload_status", .str(rec["status"] as? String ?? "?")),
                    ("workload_duration_ms", .num(Double(rec["duration_ms"] as? Int ?? -1))),
                    ("ingest_lines_per_s", .num(Double(lines) / storedSeconds)),
                    ("status_polls", .int(polls)), ("server_cpu_s_until_stored", .num(serverCPU)), ("subscriber_got_end", .bool(rep.ended == 1)),
                    ("raw_lines", .int(raw.lines)), ("bytes_received", .int(rep.bytes)),
                    ("errors", .arr(rep.errors.map { .str($0) })),
                ]
                log("B4: stored in \(fmt(storedSeconds)) s, delivered in \(fmt(deliveredSeconds)) s, raw \(fmt(raw.seconds)) s")
            }
        } catch {
            res.error = "\(error)"
            log("B4 failed: \(error)")
        }
        return [res]
    }
}

/// GET /healthz on a fresh connection every `intervalMs`, latencies kept per phase.
final class HealthProber: @unchecked Sendable {
    let group: EventLoopGroup
    let port: Int
    let intervalMs: Int
    private let lock = NSLock()
    private var samples: [(String, Double)] = []
    private var _phase = ""
    private(set) var failures = 0
    private let running = ManagedAtomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(group: EventLoopGroup, port: Int, intervalMs: Int) {
        self.group = group
        self.port = port
        self.intervalMs = intervalMs
    }

    var phase: String {
        get { lock.lock(); defer { lock.unlock() }; return _phase }
        set { lock.lock(); _phase = newValue; lock.unlock() }
    }

    func start(phase: String) {
        self.phase = phase
        running.store(true, ordering: .relaxed)
        Thread { [self] in
            // Bounded: at most one hour of probes.
            let stopAt = monoNs() + 3_600_000_000_000
            while running.load(ordering: .relaxed) && monoNs() < stopAt {
                let ph = self.phase
                let t = monoNs()
                do {
                    let c = try SimpleConnection.connect(group: group, host: "127.0.0.1", port: port, timeoutMs: 5_000)
                    let r = try c.request("GET", "/healthz", timeoutMs: 5_000)
                    let d = ms(monoNs() - t)
                    c.close()
                    lock.lock()
                    if r.status == 200 { samples.append((ph, d)) } else { failures += 1 }
                    lock.unlock()
                } catch {
                    lock.lock()
                    failures += 1
                    lock.unlock()
                }
                let spent = Int(ms(monoNs() - t))
                if spent < intervalMs { usleep(UInt32((intervalMs - spent) * 1000)) }
            }
            finished.signal()
        }.start()
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        finished.wait()
    }

    func latencies(_ phase: String?) -> [Double] {
        lock.lock()
        defer { lock.unlock() }
        return samples.filter { phase == nil || $0.0 == phase }.map { $0.1 }
    }
}
