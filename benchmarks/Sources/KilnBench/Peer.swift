import Foundation

/// B5: Kiln against a peer, `kiln-peer` (a minimal Hummingbird 2 server with the same endpoints
/// and broker semantics, in peers/hummingbird-peer), through the B1 cases, B2 and a wrk test of
/// /healthz, one server after the other in the same run. Every comparative figure has Kiln's
/// value, the peer's, and the target "Kiln ahead"; each server's own correctness (no loss, every
/// stream its heartbeats and its end, no failed request) is a figure of its own.
extension Bench {
    func b5() -> [CaseResult] {
        let peer = cfg.peer
        guard FileManager.default.isExecutableFile(atPath: peer) else {
            return [CaseResult(benchmark: "B5", name: "peer", error:
                "no kiln-peer binary at \(peer): build it (cd benchmarks/peers/hummingbird-peer && swift build -c release) or pass --peer")]
        }
        let q = cfg.quick
        var out: [CaseResult] = []

        // B1: the same cases through the same code against each server.
        let specs = q ? b1Specs(["s100-r200"], quick: false, seconds: 3)
                      : b1Specs(cfg.b1Cases, quick: false, seconds: cfg.b1Seconds)
        quietBefore("B5/B1 kiln")
        let kilnB1 = b1Run(specs, binary: cfg.kiln, name: "kiln")
        quietBefore("B5/B1 peer")
        let peerB1 = b1Run(specs, binary: peer, name: "kiln-peer")
        for spec in specs {
            out.append(compare("B1 " + spec.key, kilnB1.first { $0.name == spec.key } ?? serverError(kilnB1),
                               peerB1.first { $0.name == spec.key } ?? serverError(peerB1),
                               figures: [("delivered rate", .higher), ("latency p50", .lower), ("latency p99", .lower)],
                               detailFigures: [("server_cpu_s_during_delivery", "server CPU time", "s", .lower)],
                               own: ["lost lines", "out-of-order lines", "events delivered"]))
        }

        // B2: idle streams.
        let streams = q ? 500 : cfg.b2Streams
        let hold = q ? 6.0 : cfg.b2HoldSeconds
        let beat = q ? 2 : cfg.b2Heartbeat
        quietBefore("B5/B2 kiln")
        let kilnB2 = b2Run(streams: streams, hold: hold, beat: beat, binary: cfg.kiln, name: "kiln")
        quietBefore("B5/B2 peer")
        let peerB2 = b2Run(streams: streams, hold: hold, beat: beat, binary: peer, name: "kiln-peer")
        out.append(compare("B2 \(streams) idle streams", kilnB2[0], peerB2[0],
                           figures: [("RSS per stream", .lower), ("/healthz p50", .lower), ("/healthz p99", .lower),
                                     ("/healthz max", .lower)],
                           detailFigures: [("connect_seconds", "time to open every stream", "s", .lower),
                                           ("server_cpu_s_during_hold", "server CPU time during hold", "s", .lower)],
                           own: ["streams held", "streams without heartbeat", "heartbeats min per stream",
                                 "max heartbeat gap", "/healthz failures", "streams ended cleanly"]))

        // wrk on /healthz.
        let seconds = q ? 3 : cfg.b5WrkSeconds
        quietBefore("B5/wrk kiln")
        let kilnWrk = wrkCase(binary: cfg.kiln, name: "kiln", seconds: seconds)
        quietBefore("B5/wrk peer")
        let peerWrk = wrkCase(binary: peer, name: "kiln-peer", seconds: seconds)
        out.append(compare("wrk /healthz", kilnWrk, peerWrk,
                           figures: [("requests/s", .higher), ("latency p50", .lower), ("latency p99", .lower)],
                           detailFigures: [], own: ["failed requests"]))
        return out
    }

    private func quietBefore(_ what: String) {
        guard cfg.waitIdle > 0 else { return }
        let busy = waitForQuietMachine(maxSeconds: cfg.waitIdle)
        if busy > 0.25 { log(String(format: "warning: the machine was %.0f%% busy before %@", busy * 100, what)) }
    }

    /// The case a run gives when its server did not start (or a placeholder).
    private func serverError(_ cases: [CaseResult]) -> CaseResult {
        cases.first { $0.error != nil } ?? CaseResult(benchmark: "?", name: "?", error: "case missing")
    }

    private func detailNumber(_ c: CaseResult, _ key: String) -> Double {
        switch c.details.first(where: { $0.0 == key })?.1 {
        case .num(let d)?: return d
        case .int(let i)?: return Double(i)
        default: return .nan
        }
    }

    /// One B5 case: Kiln's and the peer's figures side by side, and each one's own checks.
    private func compare(_ name: String, _ kiln: CaseResult, _ peer: CaseResult,
                         figures: [(String, Metric.Better)],
                         detailFigures: [(key: String, name: String, unit: String, better: Metric.Better)],
                         own: [String]) -> CaseResult {
        var res = CaseResult(benchmark: "B5", name: name)
        res.params = kiln.params.isEmpty ? peer.params : kiln.params
        var errors: [String] = []
        if let e = kiln.error { errors.append("kiln: \(e)") }
        if let e = peer.error { errors.append("peer: \(e)") }
        if !errors.isEmpty { res.error = errors.joined(separator: "; ") }
        for (figure, better) in figures {
            guard let k = kiln.metrics.first(where: { $0.name == figure }) else { continue }
            let p = peer.metrics.first { $0.name == figure }?.value ?? .nan
            res.metrics.append(Metric(name: figure, value: k.value, unit: k.unit, goal: .ahead(ofPeer: p, better)))
        }
        for f in detailFigures {
            res.metrics.append(Metric(name: f.name, value: detailNumber(kiln, f.key), unit: f.unit,
                                      goal: .ahead(ofPeer: detailNumber(peer, f.key), f.better)))
        }
        // Each server's own checks keep their own targets: a fast peer that loses lines proves nothing.
        for (who, c) in [("kiln", kiln), ("peer", peer)] {
            for m in c.metrics where own.contains(m.name) {
                var mine = m
                mine.name = "\(who): \(m.name)"
                res.metrics.append(mine)
            }
        }
        res.details = [("kiln", kiln.json), ("peer", peer.json)]
        return res
    }

    /// `wrk` against GET /healthz of a fresh server: requests/s and latency percentiles.
    private func wrkCase(binary: String, name: String, seconds: Int) -> CaseResult {
        var res = CaseResult(benchmark: "wrk", name: "/healthz")
        let threads = cfg.b5WrkThreads, conns = cfg.b5WrkConnections
        res.params = [("threads", .int(threads)), ("connections", .int(conns)), ("seconds", .int(seconds))]
        guard let wrk = findExecutable("wrk") else {
            res.error = "wrk not found (apt-get install -y wrk)"
            return res
        }
        do {
            try withServer(["KILN_MAX_CONCURRENT": "32"], binary: binary, name: name) { server, client in
                for _ in 0..<20 { _ = try? client.request("GET", "/healthz") }
                log("B5 wrk: \(threads) threads, \(conns) connections, \(seconds) s against \(name)")
                let cpu0 = server.cpuSeconds()
                let r = try runWrk(wrk, url: "http://127.0.0.1:\(server.port)/healthz",
                                   threads: threads, connections: conns, seconds: seconds)
                let cpu = server.cpuSeconds() - cpu0
                res.metrics = [
                    Metric(name: "requests/s", value: r.requestsPerSecond, unit: "1/s"),
                    Metric(name: "latency p50", value: r.p50Ms, unit: "ms"),
                    Metric(name: "latency p99", value: r.p99Ms, unit: "ms"),
                    Metric(name: "failed requests", value: Double(r.failed), unit: "requests", goal: .equals(0)),
                ]
                res.details = [("requests", .int(r.requests)), ("latency_avg_ms", .num(r.avgMs)), ("latency_max_ms", .num(r.maxMs)),
                               ("server_cpu_s", .num(cpu)), ("server_cpu_us_per_request", .num(cpu * 1e6 / Double(max(1, r.requests)))),
                               ("server_rss_kib_after", .int(server.rssKiB())), ("wrk_output", .str(r.output))]
                log("B5 wrk \(name): \(fmt(r.requestsPerSecond)) requests/s, p50 \(fmt(r.p50Ms)) ms, p99 \(fmt(r.p99Ms)) ms")
            }
        } catch {
            res.error = "\(error)"
            log("B5 wrk \(name) failed: \(error)")
        }
        return res
    }
}

/// What wrk printed, parsed.
struct WrkResult {
    var requestsPerSecond = Double.nan
    var requests = 0
    var avgMs = Double.nan
    var maxMs = Double.nan
    var p50Ms = Double.nan
    var p99Ms = Double.nan
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    var failed = 0
    var output = ""
}

func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// Runs wrk (`--latency`) to completion and parses its report.
func runWrk(_ wrk: String, url: String, threads: Int, connections: Int, seconds: Int) throws -> WrkResult {
    let (status, text) = runTool([wrk, "-t\(threads)", "-c\(connections)", "-d\(seconds)s", "--timeout", "5s", "--latency", url],
                                 timeoutSeconds: Double(seconds) + 60)
    guard status == 0 else { throw WireError("wrk exited with \(status): \(text.suffix(300))") }
    let r = parseWrk(text)
    guard r.requestsPerSecond.isFinite else { throw WireError("could not read wrk's report: \(text.suffix(300))") }
    return r
}

/// Reads wrk's report: `Requests/sec:`, the `Latency` thread stats, the `--latency`
/// distribution (50%, 99%), `N requests in`, socket errors and non-2xx/3xx responses.
func parseWrk(_ text: String) -> WrkResult {
    var r = WrkResult()
    r.output = text
    /// "1.23ms", "456.00us", "2.00s", "1.5m" in ms.
    func duration(_ s: Substring) -> Double {
        let units: [(String, Double)] = [("us", 0.001), ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (u, f) in units where s.hasSuffix(u) {
            if let v = Double(s.dropLast(u.count)) { return v * f }
        }
        return .nan
    }
    for raw in text.split(separator: "\n") {
        let line = raw.trimmingCharacters(in: .whitespaces)
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let first = f.first else { continue }
        if first == "Requests/sec:", f.count >= 2 {
            r.requestsPerSecond = Double(f[1]) ?? .nan
        } else if first == "Latency", f.count >= 4 {
            r.avgMs = duration(f[1])
            r.maxMs = duration(f[3])
        } else if first == "50%", f.count >= 2 {
            r.p50Ms = duration(f[1])
        } else if first == "99%", f.count >= 2 {
            r.p99Ms = duration(f[1])
        } else if f.count >= 3, f[1] == "requests", f[2] == "in" {
            r.requests = Int(first) ?? 0
        } else if line.hasPrefix("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            for n in line.dropFirst("Socket errors:".count).split(separator: ",") {
                if let v = n.split(separator: " ").last.flatMap({ Int($0) }) { r.failed += v }
            }
        } else if line.hasPrefix("Non-2xx or 3xx responses:") {
            r.failed += f.last.flatMap { Int($0) } ?? 0
        }
    }
    return r
}
