import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Cluster mode (SPEC §10) end to end: a real PostgreSQL server, one `api` node and two
/// `worker` nodes, each a real `kiln serve`, all over loopback HTTP.
@Suite(.serialized, .timeLimit(.minutes(10)), .ownThread,
       .enabled(if: KilnCluster.unavailableReason == nil, "\(KilnCluster.unavailableReason ?? "")"))
struct ClusterTests {
    static func counting(_ n: Int, pause: String = "0", stderrEvery: Int = 0) -> String {
        let err = stderrEvery > 0 ? "[ $((i % \(stderrEvery))) = 0 ] && echo err $i >&2; " : ""
        return #"{"runtime": "shell", "code": "i=1; while [ $i -le \#(n) ]; do echo line $i; \#(err)i=$((i+1)); [ \#(pause) = 0 ] || sleep \#(pause); done"}"#
    }

    /// Runs `curl -N` on each URL at once and returns each stream's bytes.
    static func streams(_ urls: [String], token: String, headers: [String] = []) throws -> [[UInt8]] {
        let dir = KilnServer.tempDir("kiln-streams")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let extra = headers.map { "-H '\($0)'" }.joined(separator: " ")
        let script = urls.enumerated().map { i, url in
            "curl -sS -N --max-time 120 -H 'Authorization: Bearer \(token)' \(extra) '\(url)' -o \(dir)/\(i) &"
        }.joined(separator: "\n") + "\nwait"
        let (status, _, err) = try Curl.exec("/bin/bash", ["-c", script])
        guard status == 0 else { throw TestFailure("curl failed: \(String(decoding: err, as: UTF8.self))") }
        return try urls.indices.map { Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\($0)"))) }
    }

    /// The ids and data of a stream's line events, and its end event's data.
    static func parse(_ bytes: [UInt8]) -> (ids: [Int64], lines: [String], end: String?) {
        var ids: [Int64] = [], lines: [String] = [], end: String? = nil
        for block in String(decoding: bytes, as: UTF8.self).components(separatedBy: "\n\n") where !block.isEmpty {
            var id: Int64?, data: [String] = [], event = "message"
            for field in block.split(separator: "\n", omittingEmptySubsequences: false) {
                if field.hasPrefix("id: ") { id = Int64(field.dropFirst(4)) }
                if field.hasPrefix("data: ") { data.append(String(field.dropFirst(6))) }
                if field.hasPrefix("event: ") { event = String(field.dropFirst(7)) }
            }
            if event == "end" { end = data.joined(separator: "\n"); continue }
            if event == "message", let id { ids.append(id); lines.append(data.joined(separator: "\n")) }
        }
        return (ids, lines, end)
    }

    @Test func submittedOnTheAPINodeItRunsOnAWorkerAndAnswersSynchronously() throws {
        let c = try KilnCluster()
        defer { c.stop() }
        let record = try c.api.run(#"{"runtime": "shell", "code": "echo hello from a worker >&2; echo '{\"ok\": true}'"}"#)
        #expect(record["status"] == .string("completed"))
        #expect(record["isolation_used"] == .string("sandbox"))
        #expect(record["output"]?["ok"] == .bool(true))
        let (status, nodes) = try c.api.json("GET", "/v1/nodes")
        #expect(status == 200)
        let list = nodes["nodes"]?.arrayValue ?? []
        #expect(list.compactMap { $0["name"]?.stringValue } == ["api-1", "worker-1", "worker-2"])
        #expect(list.compactMap { $0["role"]?.stringValue } == ["api", "worker", "worker"])
        #expect(list.allSatisfy { $0["state"] == .string("live") })
        #expect(list.first?["capacity"] == .int(0))
        #expect(list.last?["backends"]?.arrayValue?.contains(.string("sandbox")) == true)
        // Every node answers for every workload.
        for n in c.nodes {
            #expect(try n.json("GET", "/v1/workloads/\(record["id"]!.stringValue!)").1["status"] == .string("completed"))
        }
    }

    @Test func aStreamIsTheSameByteForByteOnEveryNode() throws {
        let c = try KilnCluster()
        defer { c.stop() }
        let id = try c.api.submit(Self.counting(1500, pause: "0.001", stderrEvery: 50))
        let urls = c.nodes.map { "\($0.baseURL)/v1/workloads/\(id)/logs" }
        let live = try Self.streams(urls, token: c.token)
        let parsed = Self.parse(live[0])
        #expect(parsed.ids == Array(1...1530))
        #expect(parsed.end?.contains(#""status":"completed""#) == true)
        for (i, bytes) in live.enumerated().dropFirst() {
            #expect(bytes == live[0], "node \(i)'s live stream differs from the api node's")
        }
        // And the same again after the end, from the store.
        #expect(try Self.streams([urls[1]], token: c.token)[0] == live[0])
    }

    @Test func twoHundredSubscribersOverTwoNodesGetEveryLineInOrder() throws {
        let c = try KilnCluster()
        defer { c.stop() }
        let id = try c.api.submit(Self.counting(400, pause: "0.005"))
        let urls = (0..<200).map { i in "\((i % 2 == 0 ? c.api : c.workers[0]).baseURL)/v1/workloads/\(id)/logs" }
        let all = try Self.streams(urls, token: c.token)
        for (i, bytes) in all.enumerated() {
            let p = Self.parse(bytes)
            #expect(p.ids == Array(1...400), "subscriber \(i)")
            #expect(p.lines == (1...400).map { "line \($0)" }, "subscriber \(i)")
            #expect(p.end != nil, "subscriber \(i)")
        }
    }

    @Test func lastEventIDMovesBetweenNodesWithNothingLostOrRepeated() throws {
        let c = try KilnCluster()
        defer { c.stop() }
        let total = 3000
        let id = try c.api.submit(Self.counting(total, pause: "0.002"))
        var seen: [Int64] = []
        var last: Int64 = 0
        var generator = SystemRandomNumberGenerator()
        for hop in 0..<20 {
            let node = c.nodes[hop % c.nodes.count]
            let url = "\(node.baseURL)/v1/workloads/\(id)/logs"
            // A short read, cut at a random event: the client "moves" there.
            let (_, out, _) = try Curl.exec("/usr/bin/curl", ["-sS", "-N", "--max-time", "0.4", "-H", "Authorization: Bearer \(c.token)",
                                                              "-H", "Last-Event-ID: \(last)", url])
            let p = Self.parse(out)
            guard !p.ids.isEmpty else { continue }
            let cut = Int.random(in: 1...p.ids.count, using: &generator)
            seen += p.ids.prefix(cut)
            last = seen.last!
        }
        // Then to the end on the api node.
        let rest = Self.parse(try Self.streams(["\(c.api.baseURL)/v1/workloads/\(id)/logs"], token: c.token,
                                               headers: ["Last-Event-ID: \(last)"])[0])
        seen += rest.ids
        #expect(seen == Array(1...Int64(total)))
        #expect(rest.end?.contains(#""status":"completed""#) == true)
    }

    @Test func aKillSentToTheAPINodeEndsTheWorkloadOnItsWorker() throws {
        let c = try KilnCluster()
        defer { c.stop() }
        let id = try c.api.submit(#"{"runtime": "shell", "code": "echo started; sleep 120"}"#)
        try c.api.waitRunning(id)
        let stream = try SSEClient.start("\(c.api.baseURL)/v1/workloads/\(id)/logs", ["--header", "Authorization: Bearer \(c.token)"])
        let (status, killed) = try c.api.json("DELETE", "/v1/workloads/\(id)")
        #expect(status == 200)
        #expect(killed["status"] == .string("killed"))
        #expect(killed["error"] == .string("killed by request"))
        let report = try stream.wait()
        let conn = report["connections"]?.arrayValue?.first
        #expect(conn?["ended"] == .bool(true))
        // A pending one is killed by the api node itself; a purge from a worker removes it.
        let purged = try c.api.submit(#"{"runtime": "shell", "code": "true"}"#)
        _ = try c.api.waitTerminal(purged)
        #expect(try c.workers[1].request("DELETE", "/v1/workloads/\(purged)?purge=true").status == 204)
        #expect(try c.api.request("GET", "/v1/workloads/\(purged)").status == 404)
    }

    @Test func aWorkerKilledMidRunIsLostAndItsWorkloadFailsWithNodeLost() throws {
        let c = try KilnCluster(workers: 1, leaseSeconds: 3)
        defer { c.stop() }
        let id = try c.api.submit(#"{"runtime": "shell", "code": "echo before; sleep 120"}"#)
        try c.api.waitRunning(id)
        let worker = try c.busyWorker()
        let stream = try SSEClient.start("\(c.api.baseURL)/v1/workloads/\(id)/logs", ["--header", "Authorization: Bearer \(c.token)"])
        worker.stop(signal: SIGKILL)
        let record = try c.api.waitTerminal(id, timeout: 30)
        #expect(record["status"] == .string("failed"))
        #expect(record["error"] == .string("node lost"))
        let conn = try stream.wait()["connections"]?.arrayValue?.first
        #expect(conn?.eventLines == ["before"])
        #expect(conn?["ended"] == .bool(true))
        let nodes = try c.api.json("GET", "/v1/nodes").1["nodes"]?.arrayValue ?? []
        #expect(nodes.first { $0["name"] == .string("worker-1") }?["state"] == .string("lost"))
    }

    @Test func postgresStoppedMidStreamLosesNothingAndReadinessSaysSo() throws {
        let c = try KilnCluster(workers: 1)
        defer { c.stop() }
        let n = 200
        let id = try c.api.submit(Self.counting(n, pause: "0.05"))
        try c.api.waitRunning(id)
        let urls = [c.api, c.workers[0]].map { "\($0.baseURL)/v1/workloads/\(id)/logs" }
        let box = StreamsBox()
        let reader = Thread { box.set(Result { try Self.streams(urls, token: c.token) }) }
        reader.start()
        usleep(1_000_000)
        try c.pg.pause()
        // Every node says it is not ready while the database is away.
        for node in c.nodes {
            var status = 0
            for _ in 0..<100 where status != 503 {
                status = try node.request("GET", "/readyz").status
                if status != 503 { usleep(50_000) }
            }
            #expect(status == 503, "\(node.baseURL)")
        }
        usleep(5_000_000)
        try c.pg.resume()
        let record = try c.api.waitTerminal(id, timeout: 120)
        #expect(record["status"] == .string("completed"))
        let got = try box.wait()
        for (i, bytes) in got.enumerated() {
            let p = Self.parse(bytes)
            #expect(p.ids == Array(1...Int64(n)), "stream \(i)")
            #expect(p.end?.contains(#""status":"completed""#) == true, "stream \(i)")
        }
        let history = try c.api.json("GET", "/v1/workloads/\(id)/logs/history?limit=1000").1
        #expect(history["lines"]?.arrayValue?.compactMap { $0["line"]?.stringValue } == (1...n).map { "line \($0)" })
        for node in c.nodes {
            var status = 0
            for _ in 0..<200 where status != 200 {
                status = try node.request("GET", "/readyz").status
                if status != 200 { usleep(50_000) }
            }
            #expect(status == 200, "\(node.baseURL) stays unready")
        }
    }

    @Test func twoThousandWorkloadsEachRunExactlyOnce() throws {
        let c = try KilnCluster(env: ["KILN_MAX_CONCURRENT": "8", "KILN_QUEUE_LIMIT": "5000"], isolation: "process")
        defer { c.stop() }
        let dir = KilnServer.tempDir("kiln-once")
        let runs = dir + "/runs"
        let count = 2000
        // Submitted by one keep-alive client (2,000 curl processes would take longer than the runs).
        let script = """
            import http.client, json, sys
            host, port, token, runs, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
            c = http.client.HTTPConnection(host, port)
            ids = []
            for i in range(n):
                body = json.dumps({"runtime": "shell", "isolation": "process", "code": 'echo "$N" >> "$RUNS"', "env": {"N": str(i), "RUNS": runs}})
                c.request("POST", "/v1/workloads/async", body, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
                r = c.getresponse(); data = r.read()
                if r.status != 202: sys.exit("submit %d answered %d: %s" % (i, r.status, data))
                ids.append(json.loads(data)["id"])
            print("\\n".join(ids))
            """
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", "-c", script, "127.0.0.1", String(c.api.port), c.token, runs, String(count)])
        #expect(status == 0, "\(String(decoding: err, as: UTF8.self))")
        let ids = String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(ids.count == count)
        let deadline = Date().addingTimeInterval(300)
        var finished: Int64 = 0
        while finished < count && Date() < deadline {
            let w = try c.api.json("GET", "/v1/stats").1["workloads"]
            finished = ["completed", "failed", "killed"].compactMap { w?[$0]?.int64Value }.reduce(0, +)
            if finished < count { usleep(200_000) }
        }
        #expect(finished == count)
        let lines = ((try? String(contentsOfFile: runs, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        #expect(lines.count == count, "runs recorded: \(lines.count)")
        #expect(Set(lines) == Set((0..<count).map(String.init)))
        let stats = try c.api.json("GET", "/v1/stats").1
        #expect(stats["workloads"]?["completed"] == .int(Int64(count)))
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test func aSingleServerListsItselfAsItsOnlyNode() throws {
        let s = try KilnServer.start()
        defer { s.stop() }
        let (status, body) = try s.json("GET", "/v1/nodes")
        #expect(status == 200)
        let nodes = body["nodes"]?.arrayValue ?? []
        #expect(nodes.count == 1)
        #expect(nodes.first?["role"] == .string("all"))
        #expect(nodes.first?["state"] == .string("live"))
        // A role other than all needs a cluster database.
        #expect(throws: (any Error).self) { try KilnServer.start(env: ["KILN_ROLE": "worker"]) }
    }
}

/// The result of a background stream read.
final class StreamsBox: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<[[UInt8]], any Error>?
    func set(_ r: Result<[[UInt8]], any Error>) { result = r; done.signal() }
    func wait() throws -> [[UInt8]] {
        done.wait()
        return try result!.get()
    }
}
