import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Stopping, killing and restarting the real server on the same database.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct LifecycleTests {
    @Test func sigkillMidWorkloadThenRestartMarksItFailedAndItsTreeIsGone() throws {
        let dir = KilnServer.tempDir()
        let db = "\(dir)/kiln.db"
        let marker = "kiln-orphan-\(UUID().uuidString.prefix(8))"
        let first = try KilnServer.start(db: db)
        let id = try first.submit(#"{"runtime": "shell", "isolation": "process", "code": "echo before; (setsid sh -c 'sleep 600' \#(marker) &); sh -c 'sleep 600' \#(marker)-child"}"#)
        try first.waitRunning(id)
        var seen = false
        for _ in 0..<250 where !seen {
            seen = try ProcessTable.exists(marker) && (first.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue?.count ?? 0) == 1
            if !seen { usleep(20_000) }
        }
        #expect(seen)
        first.stop(signal: SIGKILL)
        // The whole tree dies with the server, grandchildren that left the group included.
        var gone = false
        for _ in 0..<100 where !gone {
            gone = !ProcessTable.exists(marker)
            if !gone { usleep(20_000) }
        }
        #expect(gone)

        let second = try KilnServer.start(db: db)
        let (_, r) = try second.json("GET", "/v1/workloads/\(id)")
        #expect(r["status"] == .string("failed"))
        #expect(r["error"] == .string("server restarted"))
        #expect(r["log_lines"] == .int(1))
        let c = try SSEClient.first("\(second.baseURL)/v1/workloads/\(id)/logs")
        #expect(c.eventLines == ["before"])
        #expect(c["ended"] == .bool(true))
        let end = try JSON.parse(c["end"]?["data"]?.stringValue ?? "")
        #expect(end["error"] == .string("server restarted"))
        // The restarted server works.
        #expect(try second.run(#"{"runtime": "shell", "isolation": "process", "code": "echo again"}"#)["status"] == .string("completed"))
    }

    @Test func sigtermStopsWorkloadsFlushesEveryLineAndEndsEveryStream() throws {
        let dir = KilnServer.tempDir()
        let db = "\(dir)/kiln.db"
        // One slot: the second workload is still queued when SIGTERM comes.
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": "1"], db: db)
        let marker = "kiln-sigterm-\(UUID().uuidString.prefix(8))"
        let id = try s.submit(#"{"runtime": "python", "isolation": "process", "code": "import subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 600', '\#(marker)'])\ni = 0\nwhile True:\n    i += 1\n    print(f'line {i}', flush=True)\n    if i % 100 == 0: time.sleep(0.01)", "resources": {"timeout_s": 120}}"#)
        let pending = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "true"}"#)
        try s.waitRunning(id)
        #expect(try s.json("GET", "/v1/workloads/\(pending)").1["status"] == .string("pending"))
        let streams = try (0..<3).map { _ in try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs", ["--summary"]) }
        // The three streams are open (a busy machine may take seconds to start the clients).
        try s.waitForSubscribers(3)
        usleep(300_000)
        let status = s.stop(signal: SIGTERM)
        #expect(status == 0)
        #expect(!ProcessTable.exists(marker))
        for stream in streams {
            let c = try stream.wait()["connections"]?.arrayValue?.first ?? .null
            #expect(c["ended"] == .bool(true), "\(c)")
            #expect(c["in_order"] == .bool(true))
            let end = try JSON.parse(c["end"]?["data"]?.stringValue ?? "{}")
            #expect(end["error"] == .string("server shutdown"))
            #expect(end["status"] == .string("failed"))
        }
        #expect(s.stderrText.contains("stopped"))
        // Every line printed before the stop is in the database, without gaps.
        let again = try KilnServer.start(db: db)
        let (_, r) = try again.json("GET", "/v1/workloads/\(id)")
        #expect(r["status"] == .string("failed"))
        #expect(r["error"] == .string("server shutdown"))
        let count = r["log_lines"]?.int64Value ?? 0
        #expect(count > 0)
        var seqs: [Int64] = []
        var texts: [String] = []
        var after: Int64 = 0
        while true {
            let page = try again.json("GET", "/v1/workloads/\(id)/logs/history?after=\(after)&limit=10000").1
            let lines = page["lines"]?.arrayValue ?? []
            seqs += lines.compactMap { $0["seq"]?.int64Value }
            texts += lines.compactMap { $0["line"]?.stringValue }
            if page["complete"] == .bool(true) || lines.isEmpty { break }
            after = seqs.last!
        }
        #expect(seqs == Array(1...count))
        #expect(texts == (1...count).map { "line \($0)" })
    }

    /// SPEC §8, shutdown under load: five workloads printing, fifty streams following them;
    /// SIGTERM ends the server with exit 0 within 10 s (stop's SIGKILL comes at 10 s), every
    /// stream gets its `end`, and what was stored is gap-free. The workloads print about
    /// 1,000 lines a second each, so that these Python clients keep up: a client that
    /// cannot is disconnected instead, to resume with Last-Event-ID (SPEC §4).
    @Test func sigtermDuringAFloodWithFiftyFollowersEndsEveryStreamWithinTenSeconds() throws {
        let dir = KilnServer.tempDir()
        let db = "\(dir)/kiln.db"
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": "8"], db: db)
        let flood = #"{"runtime": "python", "isolation": "process", "code": "import time\ni = 0\nwhile True:\n    i += 1\n    print('x' * 200, i, flush=True)\n    if i % 50 == 0: time.sleep(0.05)", "resources": {"timeout_s": 300}}"#
        let ids = try (0..<5).map { _ in try s.submit(flood) }
        for id in ids { try s.waitRunning(id) }
        let streams = try ids.map { id in try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs", ["--summary", "--count", "10"]) }
        try s.waitForSubscribers(50)
        usleep(500_000)
        let status = s.stop(signal: SIGTERM, timeout: 10)
        #expect(status == 0, "exit status \(status) (a SIGKILL after 10 s shows as 9)")
        var ended = 0
        for stream in streams {
            for c in try stream.wait()["connections"]?.arrayValue ?? [] {
                #expect(c["ended"] == .bool(true) && c["in_order"] == .bool(true), "\(c)")
                if c["ended"] == .bool(true) { ended += 1 }
            }
        }
        #expect(ended == 50)
        let again = try KilnServer.start(db: db)
        for id in ids {
            let r = try again.json("GET", "/v1/workloads/\(id)").1
            #expect(r["status"] == .string("failed") && r["error"] == .string("server shutdown"), "\(r.text)")
            let count = r["log_lines"]?.int64Value ?? 0
            let last = try again.json("GET", "/v1/workloads/\(id)/logs/history?after=\(max(0, count - 1))").1["lines"]?.arrayValue ?? []
            #expect(last.count == 1 && last.first?["seq"]?.int64Value == count, "\(id): log_lines \(count), last stored \(last)")
        }
    }

    /// The stored log is the truth (SPEC §4): a line reaches clients only once stored, so
    /// after a SIGKILL mid-flood no client holds a line the restarted server lacks.
    @Test func afterASIGKILLMidFloodNoClientHoldsALineTheStoreLacks() throws {
        let dir = KilnServer.tempDir()
        let db = "\(dir)/kiln.db"
        let s = try KilnServer.start(db: db)
        // About 1,000 lines a second in bursts of ten: the clients keep up with it, so each
        // holds lines up to the newest one sent when the server dies.
        let id = try s.submit(#"{"runtime": "python", "isolation": "process", "code": "import time\ni = 0\nwhile True:\n    for _ in range(10):\n        i += 1\n        print('y' * 100, i, flush=True)\n    time.sleep(0.01)", "resources": {"timeout_s": 300}}"#)
        try s.waitRunning(id)
        let streams = try (0..<5).map { _ in try SSEClient.start("\(s.baseURL)/v1/workloads/\(id)/logs", ["--summary", "--count", "10"]) }
        try s.waitForSubscribers(50)
        usleep(700_000)
        _ = s.stop(signal: SIGKILL)
        var lasts: [Int64] = []
        for stream in streams {
            for c in try stream.wait()["connections"]?.arrayValue ?? [] {
                #expect(c["in_order"] == .bool(true) && c["ended"] == .bool(false), "\(c)")
                lasts.append(c["last"]?.int64Value ?? 0)
            }
        }
        #expect(lasts.count == 50)
        let again = try KilnServer.start(db: db)
        let r = try again.json("GET", "/v1/workloads/\(id)").1
        #expect(r["status"] == .string("failed") && r["error"] == .string("server restarted"), "\(r.text)")
        let stored = r["log_lines"]?.int64Value ?? -1
        #expect(lasts.max() ?? 0 > 0, "no client got a line")
        #expect(lasts.allSatisfy { $0 <= stored }, "clients held up to \(lasts.max() ?? 0); the store has \(stored)")
        // A client resuming just before its last line gets the rest of the stored log, then
        // the end (at the stored end itself the answer is 204: nothing more will come).
        let from = max(0, (lasts.min() ?? 1) - 1)
        let resumed = try SSEClient.run("\(again.baseURL)/v1/workloads/\(id)/logs", ["--summary", "--header", "Last-Event-ID: \(from)"])
        let c = resumed["connections"]?.arrayValue?.first ?? .null
        #expect(c["ended"] == .bool(true) && c["in_order"] == .bool(true) && c["first"]?.int64Value == from + 1, "\(c)")
    }

    @Test func aSynchronousRequestInFlightAtSIGTERMGetsItsAnswer() throws {
        let s = try KilnServer.start()
        let answer = ResultList()
        let client = Thread {
            answer.add(Result { try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo waiting; sleep 30"}"#) })
        }
        client.start()
        var running = false
        for _ in 0..<500 where !running {
            running = (try? s.json("GET", "/v1/workloads?status=running").1["workloads"]?.arrayValue?.count) == 1
            if !running { usleep(20_000) }
        }
        #expect(running)
        #expect(s.stop(signal: SIGTERM) == 0)
        let deadline = Date().addingTimeInterval(30)
        while answer.values.isEmpty {
            try #require(Date() < deadline, "the synchronous request got no answer within 30 s")
            usleep(20_000)
        }
        let r = try answer.values[0].get()
        #expect(r["status"] == .string("failed"))
        #expect(r["error"] == .string("server shutdown"))
    }
}
