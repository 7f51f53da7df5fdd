import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// `GET /v1/workloads/{id}/logs` against the real binary: curl -N and a raw-socket reader.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct LogStreamTests {
    /// A shell loop printing `line 1` … `line n`, `pause` seconds apart.
    func counting(_ n: Int, pause: String = "0") -> String {
        #"{"runtime": "shell", "code": "i=1; while [ $i -le \#(n) ]; do echo line $i; i=$((i+1)); [ \#(pause) = 0 ] || sleep \#(pause); done"}"#
    }

    @Test func oneSubscriberGetsTheLinesInOrderWithTheExactFormat() throws {
        let s = try KilnServer.start()
        let id = try s.submit(counting(5, pause: "0.1"))
        let raw = KilnServer.tempDir() + "/raw"
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs", ["--raw-file", raw])
        #expect(c["status"] == .int(200))
        #expect(c["headers"]?["content-type"] == .string("text/event-stream"))
        #expect(c["headers"]?["cache-control"] == .string("no-cache"))
        #expect(c["headers"]?["x-accel-buffering"] == .string("no"))
        #expect(c.eventLines == (1...5).map { "line \($0)" })
        #expect(c["ended"] == .bool(true))
        #expect(c["eof"] == .bool(true))
        // Byte for byte: id, data, blank line; then the end event.
        let bytes = try String(contentsOfFile: raw, encoding: .utf8)
        var expected = (1...5).map { "id: \($0)\ndata: line \($0)\n\n" }.joined()
        expected += "event: end\nid: 5\ndata: {\"status\":\"completed\",\"exit_code\":0,\"error\":null,\"log_lines\":5}\n\n"
        #expect(bytes == expected)
    }

    @Test func curlFollowsTheStreamLive() throws {
        let s = try KilnServer.start()
        let id = try s.submit(counting(3, pause: "0.2"))
        let reply = try Curl.run(["-sS", "-N"], url: "\(s.baseURL)/v1/workloads/\(id)/logs")
        #expect(reply.status == 200)
        #expect(reply.text.hasPrefix("id: 1\ndata: line 1\n\n"))
        #expect(reply.text.contains("event: end\nid: 3\n"))
    }

    /// An HTTP/1.0 client gets the stream unchunked, through the response's own block
    /// buffer (HTTP/1.1 chunks are built in the connection's pool instead).
    @Test func anHTTP10ClientGetsTheWholeStreamUnchunked() throws {
        let s = try KilnServer.start()
        // About 300 KB: many blocks of the HTTP/1.0 path.
        let pad = String(repeating: "x", count: 90)
        let id = try s.submit(#"{"runtime": "shell", "code": "i=1; while [ $i -le 3000 ]; do echo line $i \#(pad); i=$((i+1)); done"}"#)
        let reply = try Curl.run(["-sS", "-N", "--http1.0"], url: "\(s.baseURL)/v1/workloads/\(id)/logs")
        #expect(reply.status == 200)
        #expect(reply.header("Transfer-Encoding") == nil)
        let data = reply.text.split(separator: "\n").filter { $0.hasPrefix("data: line ") }
        #expect(data.count == 3000)
        #expect(data.first == "data: line 1 \(pad)")
        #expect(data.last == "data: line 3000 \(pad)")
        #expect(reply.text.hasSuffix("event: end\nid: 3000\ndata: {\"status\":\"completed\",\"exit_code\":0,\"error\":null,\"log_lines\":3000}\n\n"))
    }

    @Test func severalSubscribersEachGetEverything() throws {
        let s = try KilnServer.start()
        let id = try s.submit(counting(200, pause: "0.005"))
        let report = try SSEClient.run("\(s.baseURL)/v1/workloads/\(id)/logs", ["--count", "5", "--summary"])
        let conns = report["connections"]?.arrayValue ?? []
        #expect(conns.count == 5)
        for c in conns {
            #expect(c["count"] == .int(200))
            #expect(c["first"] == .int(1))
            #expect(c["in_order"] == .bool(true))
            #expect(c["ended"] == .bool(true))
        }
    }

    @Test func aLateSubscriberWithTail0GetsOnlyLaterLines() throws {
        let s = try KilnServer.start()
        // The late line waits for the subscriber, not for a time a busy machine may overrun.
        let go = "/tmp/kiln-go-\(UUID().uuidString)"
        defer { unlink(go) }
        let id = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "echo early; while [ ! -e \#(go) ]; do sleep 0.02; done; echo late", "resources": {"timeout_s": 120}}"#)
        // Wait until the early line is stored.
        let deadline = Date().addingTimeInterval(30)
        while try s.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue?.isEmpty != false {
            try #require(Date() < deadline, "the first line was not stored within 30 s")
            usleep(20_000)
        }
        // The record counts live lines while it runs.
        #expect(try s.json("GET", "/v1/workloads/\(id)").1["log_lines"] == .int(1))
        let stream = try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs?tail=0")
        try s.waitForSubscribers(1)
        #expect(FileManager.default.createFile(atPath: go, contents: nil))
        let c = try stream.wait()["connections"]?.arrayValue?.first ?? .null
        #expect(c.eventLines == ["late"])
        #expect(c.eventIDs == [2])
        #expect(c["ended"] == .bool(true))
    }

    @Test func tailNStartsWithTheLastNLines() throws {
        let s = try KilnServer.start()
        let id = try s.run(counting(10))["id"]!.stringValue!
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs?tail=3")
        #expect(c.eventIDs == [8, 9, 10])
        #expect(c["ended"] == .bool(true))
        let all = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs?tail=100")
        #expect(all.eventIDs == Array(1...10))
    }

    @Test func aCompletedWorkloadReplaysThenEndsAtOnce() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "shell", "code": "echo one; echo two >&2; exit 3"}"#)
        let id = r["id"]!.stringValue!
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs")
        #expect(c.eventLines == ["one", "two"])
        let end = try JSON.parse(c["end"]?["data"]?.stringValue ?? "")
        #expect(end == .object([("status", .string("failed")), ("exit_code", .int(3)),
                                ("error", r["error"]!), ("log_lines", .int(2))]))
        #expect(c["end"]?["id"] == .string("2"))
        // A workload without lines ends with id 0.
        let quiet = try s.run(#"{"runtime": "shell", "code": "true"}"#)["id"]!.stringValue!
        let q = try SSEClient.first("\(s.baseURL)/v1/workloads/\(quiet)/logs")
        #expect(q["count"] == .int(0))
        #expect(q["end"]?["id"] == .string("0"))
    }

    @Test func resumingAfterTheLastLineOfAFinishedWorkloadIs204() throws {
        let s = try KilnServer.start()
        let id = try s.run(counting(4))["id"]!.stringValue!
        let byHeader = try s.request("GET", "/v1/workloads/\(id)/logs", headers: ["Last-Event-ID": "4"])
        #expect(byHeader.status == 204)
        #expect(try s.request("GET", "/v1/workloads/\(id)/logs?last_event_id=4").status == 204)
        let quiet = try s.run(#"{"runtime": "shell", "code": "true"}"#)["id"]!.stringValue!
        #expect(try s.request("GET", "/v1/workloads/\(quiet)/logs", headers: ["Last-Event-ID": "0"]).status == 204)
        // Resuming earlier gives the rest, then end.
        let rest = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs", ["--header", "Last-Event-ID: 2"])
        #expect(rest.eventIDs == [3, 4])
        #expect(try s.request("GET", "/v1/workloads/\(id)/logs", headers: ["Last-Event-ID": "x"]).status == 422)
        // Far beyond any seq: refused, and the server stays up.
        let live = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "sleep 2"}"#)
        #expect(try s.request("GET", "/v1/workloads/\(live)/logs", headers: ["Last-Event-ID": "9223372036854775807"]).status == 422)
        #expect(try s.request("GET", "/healthz").status == 200)
    }

    @Test func unknownWorkloadIs404JSON() throws {
        let s = try KilnServer.start()
        let r = try s.request("GET", "/v1/workloads/01M8BKXHHPAZQSGBQTA3DEZGVK/logs")
        #expect(r.status == 404)
        #expect(try r.json()["error"]?["code"] == .string("not_found"))
        // The id is looked up first: an unknown id is 404 whatever the parameters.
        #expect(try s.request("GET", "/v1/workloads/01M8BKXHHPAZQSGBQTA3DEZGVK/logs?tail=-1").status == 404)
    }

    @Test func jsonFormatCarriesSeqStreamTsAndLine() throws {
        let s = try KilnServer.start()
        let id = try s.run(#"{"runtime": "shell", "code": "echo out; echo err >&2"}"#)["id"]!.stringValue!
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs?format=json")
        let events = try c.eventLines.map { try JSON.parse($0) }
        try #require(events.count == 2)
        #expect(events[0]["seq"] == .int(1))
        #expect(events[0]["line"] == .string("out"))
        #expect(events[1]["stream"] == .string("stderr"))
        #expect(events[0]["ts"]?.stringValue?.hasSuffix("Z") == true)
        #expect(try s.request("GET", "/v1/workloads/\(id)/logs?format=xml").status == 422)
    }

    @Test func framingSurvivesCarriageReturnsInvalidUTF8AndLongLines() throws {
        let s = try KilnServer.start()
        let code = #"import sys\nw = sys.stdout.buffer.write\nw(b'progress 1\\rprogress 2\\r\\n')\nw(b'bad \\xff\\xfe bytes\\n')\nw(b'x' * 150000 + b'\\n')\nw(b'no newline at the end\\r')"#
        // The process backend: gVisor's pipes take partial writes, which python's unbuffered
        // raw write does not retry, and this test is about framing.
        let id = try s.run(#"{"runtime": "python", "isolation": "process", "code": "\#(code)"}"#)["id"]!.stringValue!
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs")
        #expect(c["bad_framing"]?.arrayValue?.isEmpty == true)
        let lines = c.eventLines
        try #require(lines.count == 6)
        #expect(lines[0] == "progress 1\nprogress 2")
        #expect(c["events"]?.arrayValue?[0]["data"]?.arrayValue?.count == 2)
        #expect(lines[1] == "bad \u{FFFD}\u{FFFD} bytes")
        #expect(lines[2].utf8.count == 65536)
        #expect(lines[3].utf8.count == 65536)
        #expect(lines[4].utf8.count == 150000 - 131072)
        #expect(lines[5] == "no newline at the end")
        #expect(c.eventIDs == Array(1...6))
        // The history endpoint agrees line for line.
        let history = try s.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue ?? []
        #expect(history.map { $0["line"]?.stringValue?.replacingOccurrences(of: "\r", with: "\n") ?? "" } == lines)
    }

    @Test func heartbeatsKeepIdleStreamsAlive() throws {
        let s = try KilnServer.start(env: ["KILN_HEARTBEAT_S": "1"])
        // The idle 3.5 s start once the stream is connected, however long its client takes to start.
        let go = "/tmp/kiln-go-\(UUID().uuidString)"
        defer { unlink(go) }
        let id = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "echo start; while [ ! -e \#(go) ]; do sleep 0.02; done; sleep 3.5; echo done", "resources": {"timeout_s": 120}}"#)
        let stream = try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs")
        try s.waitForSubscribers(1)
        #expect(FileManager.default.createFile(atPath: go, contents: nil))
        let c = try stream.wait()["connections"]?.arrayValue?.first ?? .null
        #expect((c["comments"]?.int64Value ?? 0) >= 2)
        #expect(c.eventLines == ["start", "done"])
    }

    @Test func resumingWithLastEventIDLosesNothingAndRepeatsNothing() throws {
        let s = try KilnServer.start()
        let id = try s.submit(#"{"runtime": "python", "code": "import time\nfor i in range(1, 10001):\n    print(f'line {i}')\n    if i % 500 == 0: time.sleep(0.05)"}"#)
        var got: [Int64] = []
        var texts: [String] = []
        var last: Int64 = 0
        var ended = false
        var rounds = 0
        while !ended && rounds < 40 {
            rounds += 1
            var options = ["--header", "Last-Event-ID: \(last)"]
            if rounds <= 20 { options += ["--max-events", String(Int.random(in: 1...450))] }
            let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs", options)
            if c["status"] == .int(204) { ended = true; break }
            got += c.eventIDs
            texts += c.eventLines
            last = got.last ?? last
            ended = c["ended"] == .bool(true)
        }
        #expect(ended)
        #expect(rounds > 20)
        #expect(got == Array(1...10000))
        #expect(texts == (1...10000).map { "line \($0)" })
    }

    @Test func aThousandSubscribersOfOneWorkloadEachGetEveryLineInOrder() throws {
        let s = try KilnServer.start()
        let id = try s.submit(#"{"runtime": "shell", "code": "sleep 2; i=1; while [ $i -le 300 ]; do echo line $i; i=$((i+1)); done"}"#)
        let report = try SSEClient.run("\(s.baseURL)/v1/workloads/\(id)/logs", ["--count", "1000", "--summary"])
        let conns = report["connections"]?.arrayValue ?? []
        #expect(conns.count == 1000)
        let good = conns.filter {
            $0["count"] == .int(300) && $0["in_order"] == .bool(true) && $0["first"] == .int(1) && $0["ended"] == .bool(true)
        }
        #expect(good.count == 1000, "\(conns.first { $0["count"] != .int(300) }?.text ?? "")")
    }

    @Test func disconnectsLeaveNoFileDescriptorThreadOrMemoryBehind() throws {
        let s = try KilnServer.start(env: ["KILN_HEARTBEAT_S": "1"])
        // A workload that prints forever-ish, and one that stays silent.
        let busy = try s.submit(#"{"runtime": "shell", "code": "while true; do echo tick; sleep 0.01; done", "resources": {"timeout_s": 120}}"#)
        let idle = try s.submit(#"{"runtime": "shell", "code": "sleep 120", "resources": {"timeout_s": 120}}"#)
        try s.waitRunning(busy)
        try s.waitRunning(idle)
        // Warm up, then take the baseline.
        _ = try SSEClient.run("\(s.baseURL)/v1/workloads/\(busy)/logs", ["--count", "50", "--max-events", "5", "--summary"])
        _ = try SSEClient.run("\(s.baseURL)/v1/workloads/\(idle)/logs", ["--count", "50", "--max-seconds", "0.3", "--summary"])
        sleep(4)
        let fds = s.openFDs(), threads = s.threads(), rss = s.rssKB()
        for _ in 0..<5 {
            // 50 vanish mid-stream, 50 while suspended on a silent workload.
            _ = try SSEClient.run("\(s.baseURL)/v1/workloads/\(busy)/logs", ["--count", "50", "--max-events", "20", "--summary"])
            _ = try SSEClient.run("\(s.baseURL)/v1/workloads/\(idle)/logs", ["--count", "50", "--max-seconds", "0.3", "--summary"])
        }
        // Three heartbeat intervals and a margin.
        sleep(4)
        let (_, stats) = try s.json("GET", "/v1/stats")
        #expect(stats["sse_subscribers"] == .int(0))
        #expect(s.openFDs() <= fds + 5, "fds \(fds) → \(s.openFDs())")
        #expect(s.threads() <= threads + 4, "threads \(threads) → \(s.threads())")
        #expect(s.rssKB() <= rss + 16 * 1024, "rss \(rss) KB → \(s.rssKB()) KB")
        _ = try s.json("DELETE", "/v1/workloads/\(busy)")
        _ = try s.json("DELETE", "/v1/workloads/\(idle)")
    }

    @Test func aSlowClientNeitherSlowsTheWorkloadNorLosesLines() throws {
        let s = try KilnServer.start()
        let id = try s.submit(#"{"runtime": "python", "code": "import time\ntime.sleep(1)\nfor i in range(1, 200001): print(f'line {i} ' + 'x' * 40)"}"#)
        let resume = KilnServer.tempDir() + "/resume"
        let slow = try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs",
                                       ["--pause-after", "1000", "--resume-file", resume, "--summary"])
        // A fast reader alongside.
        let fast = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs", ["--summary"])
        #expect(fast["count"] == .int(200_000))
        #expect(fast["in_order"] == .bool(true))
        // The workload finished while the slow client was not reading.
        let record = try s.waitTerminal(id)
        #expect(record["status"] == .string("completed"))
        #expect(!FileManager.default.fileExists(atPath: resume))
        let rssWhilePaused = s.rssKB()
        #expect(rssWhilePaused < 200 * 1024, "server RSS \(rssWhilePaused) KB with a stalled client")
        _ = FileManager.default.createFile(atPath: resume, contents: nil)
        let report = try slow.wait()
        let c = report["connections"]?.arrayValue?.first ?? .null
        #expect(c["count"] == .int(200_000))
        #expect(c["in_order"] == .bool(true))
        #expect(c["first"] == .int(1))
        #expect(c["ended"] == .bool(true))
    }

    @Test func theHistoryEndpointAgreesWithTheStream() throws {
        let s = try KilnServer.start()
        let id = try s.run(#"{"runtime": "python", "code": "import sys\nfor i in range(2500):\n    print(i, file=sys.stderr if i % 7 == 0 else sys.stdout)"}"#)["id"]!.stringValue!
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs?format=json")
        let streamed = try c.eventLines.map { try JSON.parse($0) }
        var history: [JSON] = []
        var after: Int64 = 0
        while true {
            let page = try s.json("GET", "/v1/workloads/\(id)/logs/history?after=\(after)&limit=1000").1
            history += page["lines"]?.arrayValue ?? []
            if page["complete"] == .bool(true) { break }
            after = page["next_after"]?.int64Value ?? after
        }
        #expect(streamed.count == 2500)
        #expect(streamed == history)
    }

    @Test func theQueryTokenOpensTheStreamAndCORSApplies() throws {
        let token = "tok-\(UUID().uuidString)"
        let s = try KilnServer.start(env: ["KILN_CORS_ORIGINS": "http://localhost:8000"], token: token)
        let id = try s.run(#"{"runtime": "shell", "code": "echo hi"}"#)["id"]!.stringValue!
        let url = "\(s.baseURL)/v1/workloads/\(id)/logs"
        #expect(try SSEClient.first(url)["status"] == .int(401))
        let c = try SSEClient.first("\(url)?access_token=\(token)", ["--header", "Origin: http://localhost:8000"])
        #expect(c["status"] == .int(200))
        #expect(c.eventLines == ["hi"])
        #expect(c["headers"]?["access-control-allow-origin"] == .string("http://localhost:8000"))
        #expect(try SSEClient.first("\(url)?access_token=wrong")["status"] == .int(401))
        let other = try SSEClient.first("\(url)?access_token=\(token)", ["--header", "Origin: http://127.0.0.1:8000"])
        #expect(other["headers"]?["access-control-allow-origin"] == nil)
    }
}
