import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// The real `kiln` binary on a free port, driven by curl.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct APITests {
    @Test func syncSubmitReturnsTheTerminalRecord() throws {
        let s = try KilnServer.start(isolation: KilnServer.allBackends)
        let r = try s.run(#"{"runtime": "python", "code": "import sys, json\nd = json.load(sys.stdin)\nprint(json.dumps({'sum': d['a'] + d['b']}))", "input": {"a": 1, "b": 2}}"#)
        #expect(r["status"] == .string("completed"))
        #expect(r["output"] == .object([("sum", .int(3))]))
        #expect(r["exit_code"] == .int(0))
        #expect(r["isolation"] == .string("auto"))
        // auto: the strongest available of gvisor, sandbox, process.
        let backends = try s.json("GET", "/v1/backends").1["backends"]?.arrayValue ?? []
        let strongest = ["gvisor", "sandbox", "process"].first { name in
            backends.contains { $0["name"] == .string(name) && $0["available"] == .bool(true) }
        }
        #expect(r["isolation_used"] == strongest.map { .string($0) })
        #expect(r["log_lines"] == .int(1))
        #expect(r["output_truncated"] == .bool(false))
        #expect(r["error"] == .null)
        #expect(r["resources"] == .object([("cpus", .int(1)), ("mem_mb", .int(256)), ("timeout_s", .int(30)), ("pids", .int(256)), ("disk_mb", .int(256))]))
        for key in ["created_at", "started_at", "finished_at"] {
            let t = r[key]?.stringValue ?? ""
            #expect(t.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression) != nil, "\(key): \(t)")
        }
        #expect(ULIDGenerator.isValid(r["id"]?.stringValue ?? ""))
    }

    @Test func asyncSubmitAnswers202WithLocationAndCanBePolled() throws {
        let s = try KilnServer.start()
        let reply = try s.request("POST", "/v1/workloads/async", body: #"{"runtime": "shell", "code": "sleep 0.3; echo done"}"#)
        #expect(reply.status == 202)
        let body = try reply.json()
        let id = try #require(body["id"]?.stringValue)
        #expect(body["status"] == .string("pending") || body["status"] == .string("running"))
        #expect(reply.header("Location") == "/v1/workloads/\(id)")
        let done = try s.waitTerminal(id)
        #expect(done["status"] == .string("completed"))
        #expect(done["output"] == .string("done\n"))
    }

    @Test func failedWorkloadIsStill200() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "shell", "code": "echo oops >&2; exit 7"}"#)
        #expect(r["status"] == .string("failed"))
        #expect(r["exit_code"] == .int(7))
        #expect(r["error"]?.stringValue?.contains("7") == true)
    }

    /// The connection pool is 4 KiB (a stream's memory, issue 6): a request head of 2.5 KiB
    /// is served, a log stream included; over 3 KiB Kiln answers 431 in JSON, and past what
    /// the pool holds libmicrohttpd refuses it with 431 (headers) or 414 (URL). The server
    /// goes on.
    @Test func requestHeadsUpToThreeKiBAreServedAndLongerOnesRefused() throws {
        let s = try KilnServer.start()
        let id = try s.submit(#"{"runtime": "shell", "code": "echo one; echo two"}"#)
        _ = try s.waitTerminal(id)
        let pad = String(repeating: "a", count: 2560)
        #expect(try s.request("GET", "/v1/workloads", headers: ["X-Pad": pad]).status == 200)
        #expect(try s.request("GET", "/v1/workloads/\(pad)").status == 404)
        let stream = try s.request("GET", "/v1/workloads/\(id)/logs", headers: ["X-Pad": pad])
        #expect(stream.status == 200)
        #expect(stream.text.hasPrefix("id: 1\ndata: one\n\nid: 2\ndata: two\n\nevent: end\n"))
        let over = String(repeating: "a", count: 3300)
        for reply in [try s.request("GET", "/v1/workloads/\(id)/logs", headers: ["X-Pad": over]),
                      try s.request("GET", "/v1/workloads?cursor=\(over)")] {
            #expect(reply.status == 431)
            #expect(try reply.json()["error"]?["code"] == .string("headers_too_large"))
        }
        let long = String(repeating: "a", count: 8 * 1024)
        #expect(try s.request("GET", "/v1/workloads", headers: ["X-Pad": long]).status == 431)
        #expect(try s.request("GET", "/v1/workloads/\(long)").status == 414)
        #expect(try s.request("GET", "/healthz").status == 200)
    }

    @Test func bodiesOverTheLimitGet413() throws {
        let s = try KilnServer.start(env: ["KILN_MAX_BODY_BYTES": "1000"])
        let big = #"{"runtime": "shell", "code": ""# + String(repeating: "x", count: 2000) + #""}"#
        let r = try s.request("POST", "/v1/workloads", body: big)
        #expect(r.status == 413)
        #expect(try r.json()["error"]?["code"] == .string("body_too_large"))
        // A body without a declared length (chunked) is cut off once it passes the limit.
        let chunked = try s.request("POST", "/v1/workloads", bodyBytes: [UInt8](repeating: 0x20, count: 5000),
                                    headers: ["Transfer-Encoding": "chunked"])
        #expect(chunked.status == 413)
        // A declared 50 MB body is refused before it is sent (curl waits for 100-continue).
        let huge = [UInt8](repeating: 0x20, count: 50 << 20)
        let declared = try s.request("POST", "/v1/workloads", bodyBytes: huge)
        #expect(declared.status == 413)
        #expect(try s.request("GET", "/healthz").status == 200)
    }

    @Test func historyPagesStopAtAFewMiB() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "python", "isolation": "process", "code": "for i in range(100): print(str(i % 10) * 60000)"}"#)
        let id = r["id"]!.stringValue!
        let (_, page) = try s.json("GET", "/v1/workloads/\(id)/logs/history?limit=10000")
        let count = page["lines"]?.arrayValue?.count ?? 0
        #expect(count > 0 && count < 100)
        #expect(page["complete"] == .bool(false))
        let next = try #require(page["next_after"]?.int64Value)
        #expect(next == Int64(count))
        let (_, rest) = try s.json("GET", "/v1/workloads/\(id)/logs/history?after=\(next)&limit=10000")
        #expect((rest["lines"]?.arrayValue?.count ?? 0) == 100 - count)
        #expect(rest["complete"] == .bool(true))
    }

    @Test func aVanishedStdoutReaderDoesNotStopTheServer() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: KilnServer.binary)
        p.arguments = ["serve", "--listen", "127.0.0.1:0", "--db", ":memory:"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        var first = [UInt8]()
        while true {
            let b = pipe.fileHandleForReading.readData(ofLength: 1)
            if b.isEmpty || b.first == 0x0A { break }
            first += b
        }
        let port = String(decoding: first, as: UTF8.self).split(separator: ":").last.map(String.init) ?? ""
        // Like `kiln serve | head -1`: the reader goes away after the first line.
        try pipe.fileHandleForReading.close()
        for _ in 0..<5 {
            _ = try? Curl.run(["-sS", "--max-time", "5"], url: "http://127.0.0.1:\(port)/healthz")
        }
        let reply = try Curl.run(["-sS", "--max-time", "5"], url: "http://127.0.0.1:\(port)/healthz")
        #expect(reply.status == 200)
        #expect(p.isRunning)
    }

    @Test func deleteKillsTheTreeAndRefusesTerminalWorkloads() throws {
        let s = try KilnServer.start()
        let marker = "kiln-api-kill-\(UUID().uuidString.prefix(8))"
        let id = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "(setsid sh -c 'sleep 600' \#(marker) &); echo up; sleep 600"}"#)
        try s.waitRunning(id)
        var up = false
        for _ in 0..<200 where !up {
            up = ProcessTable.exists(marker)
            if !up { usleep(20_000) }
        }
        #expect(up)
        let (status, record) = try s.json("DELETE", "/v1/workloads/\(id)")
        #expect(status == 200)
        #expect(record["status"] == .string("killed"))
        usleep(200_000)
        #expect(!ProcessTable.exists(marker))
        let again = try s.request("DELETE", "/v1/workloads/\(id)")
        #expect(again.status == 409)
        #expect(try again.json()["error"]?["code"] == .string("conflict"))
    }

    @Test func aFullQueueAnswers429WithRetryAfter() throws {
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": "1", "KILN_QUEUE_LIMIT": "1"])
        let a = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "sleep 30"}"#)
        let b = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "sleep 30"}"#)
        let r = try s.request("POST", "/v1/workloads/async", body: #"{"runtime": "shell", "isolation": "process", "code": "true"}"#)
        #expect(r.status == 429)
        #expect(r.header("Retry-After") != nil)
        #expect(try r.json()["error"]?["code"] == .string("queue_full"))
        let (_, pending) = try s.json("GET", "/v1/workloads/\(b)")
        #expect(pending["status"] == .string("pending"))
        let (_, killedPending) = try s.json("DELETE", "/v1/workloads/\(b)")
        #expect(killedPending["status"] == .string("killed"))
        _ = try s.json("DELETE", "/v1/workloads/\(a)")
    }

    @Test func timeoutFailsTheWorkloadNamingTheTimeout() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "python", "isolation": "process", "code": "import time\nprint('start', flush=True)\ntime.sleep(60)", "resources": {"timeout_s": 1}}"#)
        #expect(r["status"] == .string("failed"))
        #expect(r["error"]?.stringValue?.contains("timed out") == true)
        #expect(r["log_lines"] == .int(1))
    }

    @Test func manySynchronousRequestsRunInParallelWhileHealthzAnswers() throws {
        let n = 24
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": String(n)])
        let bodies = ResultList()
        let clients = Thread {
            bodies.add(Result { try JSON.array(Curl.parallel(n, ["-X", "POST", "--data-binary", #"{"runtime": "shell", "isolation": "process", "code": "sleep 1; echo ok"}"#],
                                                             url: s.baseURL + "/v1/workloads").map { try JSON.parse($0) }) })
        }
        clients.start()
        // Sync requests hold no daemon thread: healthz answers while they run.
        var healthy = 0
        for _ in 0..<10 {
            if (try? s.request("GET", "/healthz", timeout: 5))?.status == 200 { healthy += 1 }
            usleep(50_000)
        }
        let deadline = Date().addingTimeInterval(120)
        while bodies.values.isEmpty {
            try #require(Date() < deadline, "the parallel runs did not answer within 120 s")
            usleep(20_000)
        }
        #expect(healthy == 10)
        let records = try bodies.values[0].get().arrayValue ?? []
        #expect(records.count == n)
        #expect(records.allSatisfy { $0["status"] == .string("completed") })
        // Every run overlapped every other: they ran in parallel.
        let starts = records.compactMap { $0["started_at"]?.stringValue }
        let ends = records.compactMap { $0["finished_at"]?.stringValue }
        #expect(starts.max()! < ends.min()!)
    }

    @Test func theServerEnvironmentNeverReachesAWorkload() throws {
        let s = try KilnServer.start(env: ["KILN_TEST_SECRET": "hunter2-\(UUID().uuidString)"], token: "tok-\(UUID().uuidString)")
        let r = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "env", "env": {"MINE": "1"}}"#)
        let out = r["output"]?.stringValue ?? ""
        #expect(!out.contains("hunter2"))
        #expect(!out.contains(s.token!))
        #expect(out.contains("MINE=1"))
        #expect(out.contains("PATH="))
    }

    @Test func stdoutOver1MiBIsTruncatedAndFlagged() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "python", "code": "import sys\nsys.stdout.write('y' * (3 * 1024 * 1024))"}"#)
        #expect(r["output_truncated"] == .bool(true))
        #expect(r["output"]?.stringValue?.utf8.count == 1 << 20)
        #expect(r["status"] == .string("completed"))
    }

    @Test func invalidUTF8OnStdoutKeepsTheResponseValidJSON() throws {
        let s = try KilnServer.start()
        let reply = try s.request("POST", "/v1/workloads", body: #"{"runtime": "shell", "code": "printf 'bad \\377\\376 bytes\\n'; printf '{\"a\": 1,}'"}"#)
        #expect(reply.status == 200)
        let r = try reply.json()
        #expect(r["output"]?.stringValue?.contains("\u{FFFD}") == true)
    }

    @Test func tokenGuardsV1ButNotHealthz() throws {
        let token = "t-\(UUID().uuidString)"
        let s = try KilnServer.start(token: token)
        #expect(try s.request("GET", "/healthz", auth: false).status == 200)
        let none = try s.request("GET", "/v1/workloads", auth: false)
        #expect(none.status == 401)
        #expect(try none.json()["error"]?["code"] == .string("unauthorized"))
        #expect(try s.request("GET", "/v1/workloads", headers: ["Authorization": "Bearer wrong"], auth: false).status == 401)
        #expect(try s.request("GET", "/v1/workloads", headers: ["Authorization": "Bearer \(token)x"], auth: false).status == 401)
        #expect(try s.request("GET", "/v1/workloads").status == 200)
        // Unknown /v1 paths and methods are 401 too without a token: nothing is revealed.
        #expect(try s.request("GET", "/v1/nothing", auth: false).status == 401)
        #expect(try s.request("PUT", "/v1/workloads", auth: false).status == 401)
        // The query token is for the log stream only.
        #expect(try s.request("GET", "/v1/workloads?access_token=\(token)", auth: false).status == 401)
    }

    @Test func accessLogIsOneJSONLinePerRequestWithoutSecrets() throws {
        let token = "secret-\(UUID().uuidString)"
        let s = try KilnServer.start(token: token)
        let id = try s.run(#"{"runtime": "shell", "code": "echo request-body-marker"}"#)["id"]!.stringValue!
        _ = try s.request("GET", "/v1/workloads/\(id)/logs?access_token=\(token)", auth: false)
        _ = try s.request("GET", "/healthz")
        usleep(100_000)
        let lines = s.stdoutText.split(separator: "\n").dropFirst()
        #expect(lines.count >= 3)
        for line in lines {
            let j = try JSON.parse(String(line))
            for key in ["time", "request_id", "method", "path", "status", "duration_ms"] { #expect(j[key] != nil, "\(key) in \(line)") }
        }
        let text = s.stdoutText
        #expect(!text.contains(token))
        #expect(!text.contains("request-body-marker"))
        #expect(text.contains("access_token=REDACTED"))
    }

    /// Gauges of running and pending workloads, and the build, as SPEC §9 lists them.
    @Test func metricsGaugeRunningAndPendingWorkloadsAndTheBuild() throws {
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": "1"])
        let go = "/tmp/kiln-go-\(UUID().uuidString)"
        defer { unlink(go) }
        let held = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "while [ ! -e \#(go) ]; do sleep 0.05; done", "resources": {"timeout_s": 120}}"#)
        try s.waitRunning(held)
        let queued = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "true"}"#)
        let during = try s.request("GET", "/metrics").text
        #expect(during.contains("kiln_workloads_running 1.0") && during.contains("kiln_workloads_pending 1.0"), "\(during)")
        #expect(during.contains("kiln_build_info{version=\"0.1.0\"} 1.0"))
        #expect(FileManager.default.createFile(atPath: go, contents: nil))
        _ = try s.waitTerminal(queued)
        let deadline = Date().addingTimeInterval(30)
        while !(try s.request("GET", "/metrics").text).contains("kiln_workloads_running 0.0") {
            try #require(Date() < deadline, "the running gauge did not come back to 0")
            usleep(50_000)
        }
        let after = try s.request("GET", "/metrics").text
        #expect(after.contains("kiln_workloads_pending 0.0"))
        // Duration buckets reach the longest timeout a workload may have (KILN_MAX_TIMEOUT_S).
        #expect(after.contains("kiln_workload_duration_seconds_bucket{backend=\"process\",le=\"3600.0\"}"), "\(after)")
        let (code, version, _) = try Curl.exec(KilnServer.binary, ["--version"])
        #expect(code == 0 && String(decoding: version, as: UTF8.self) == "0.1.0\n")
    }

    @Test func statsBackendsAndMetricsReport() throws {
        let s = try KilnServer.start()
        _ = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo a; echo b"}"#)
        _ = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "exit 1"}"#)
        let (_, stats) = try s.json("GET", "/v1/stats")
        #expect(stats["workloads"]?["total"] == .int(2))
        #expect(stats["workloads"]?["completed"] == .int(1))
        #expect(stats["workloads"]?["failed"] == .int(1))
        #expect(stats["backends"]?["process"]?["count"] == .int(2))
        #expect(stats["log_lines_total"] == .int(2))
        #expect(stats["sse_subscribers"] == .int(0))
        let (_, backends) = try s.json("GET", "/v1/backends")
        let process = backends["backends"]?.arrayValue?.first { $0["name"] == .string("process") }
        #expect(process?["available"] == .bool(true))
        #expect(process?["runtimes"]?.arrayValue?.contains(.string("python")) == true)
        let metrics = try s.request("GET", "/metrics").text
        #expect(metrics.contains("kiln_workloads_total"))
        #expect(metrics.contains("kiln_http_requests_total"))
        #expect(metrics.contains("kiln_log_lines_total"))
        #expect(metrics.contains("route=\"/v1/workloads\""))
        let (_, health) = try s.json("GET", "/healthz")
        #expect(health["status"] == .string("ok"))
        #expect(health["version"]?.stringValue?.isEmpty == false)
        #expect(health["uptime_s"]?.int64Value != nil)
    }

    @Test(arguments: [
        (["--listen", "nonsense"], "KILN_LISTEN"),
        (["--listen", "127.0.0.1:99999"], "KILN_LISTEN"),
        (["--max-concurrent", "-1"], "KILN_MAX_CONCURRENT"),
        (["--queue-limit", "many"], "KILN_QUEUE_LIMIT"),
        (["--default-timeout-s", "100", "--max-timeout-s", "10"], "KILN_DEFAULT_TIMEOUT_S"),
        (["--log-level", "loud"], "KILN_LOG_LEVEL"),
        (["--max-timeout-s", "100000000000"], "KILN_MAX_TIMEOUT_S"),
        (["--listen", "256.1.1.1:80"], "listen"),
    ])
    func invalidConfigurationStopsWithExitCode2(_ args: [String], _ mentions: String) throws {
        let (status, out, err) = try Curl.exec(KilnServer.binary, ["serve", "--db", ":memory:"] + args)
        #expect(status == 2)
        let message = String(decoding: err, as: UTF8.self)
        #expect(message.contains(mentions), "\(message)")
        #expect(message.split(separator: "\n").count == 1)
        #expect(out.isEmpty)
    }

    @Test func environmentVariablesConfigureAndFlagsWin() throws {
        let s = try KilnServer.start(env: ["KILN_DEFAULT_TIMEOUT_S": "7"], args: ["--max-timeout-s", "8"])
        let r = try s.run(#"{"runtime": "shell", "code": "true"}"#)
        #expect(r["resources"]?["timeout_s"] == .int(7))
        let over = try s.request("POST", "/v1/workloads", body: #"{"runtime": "shell", "code": "true", "resources": {"timeout_s": 9}}"#)
        #expect(over.status == 422)
    }
}

final class ResultList: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var items: [Result<JSON, any Error>] = []
    func add(_ r: Result<JSON, any Error>) { lock.lock(); items.append(r); lock.unlock() }
    var values: [Result<JSON, any Error>] { lock.lock(); defer { lock.unlock() }; return items }
}
