import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// The `kiln` client subcommands against the real server.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct CLITests {
    func kiln(_ s: KilnServer?, _ args: [String], server: String? = nil) throws -> (status: Int32, out: String, err: String) {
        var full = args
        full += ["--server", server ?? s!.baseURL]
        if let token = s?.token { full += ["--token", token] }
        let (status, out, err) = try Curl.exec(KilnServer.binary, full)
        return (status, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    @Test func runPrintsTheOutputAndExitsWithTheWorkloadsCode() throws {
        let s = try KilnServer.start()
        let ok = try kiln(s, ["run", "--runtime", "python", "--isolation", "process", "--input", #"{"a": 20}"#,
                              "--code", "import sys, json\nprint(json.load(sys.stdin)['a'] + 1)"])
        #expect(ok.status == 0)
        #expect(ok.out == "21\n")
        let failed = try kiln(s, ["run", "--runtime", "shell", "--isolation", "process", "--code", "echo partial; exit 3"])
        #expect(failed.status == 3)
        // What a failing workload wrote to stderr is shown, not only "failed exit 1".
        let traceback = try kiln(s, ["run", "--runtime", "python", "--isolation", "process", "--code", "print("])
        #expect(traceback.status == 1 && traceback.err.contains("SyntaxError"), "\(traceback.err)")
        #expect(failed.out == "partial\n")
        #expect(failed.err.contains("exit 3"))
        let json = try kiln(s, ["run", "--json", "--runtime", "shell", "--isolation", "process", "--code", "echo hi"])
        #expect(try JSON.parse(json.out)["status"] == .string("completed"))
        let file = KilnServer.tempDir() + "/job.sh"
        try Data("echo from a file".utf8).write(to: URL(fileURLWithPath: file))
        #expect(try kiln(s, ["run", "--runtime", "shell", "--isolation", "process", "--file", file]).out == "from a file\n")
    }

    @Test func rmRefusesARunningWorkloadUnlessForcedAndRemovesAFinishedOne() throws {
        let s = try KilnServer.start()
        let running = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "sleep 600"}"#)
        try s.waitRunning(running)
        let refused = try kiln(s, ["rm", running])
        #expect(refused.status != 0)
        #expect(refused.err.contains("--force"), "\(refused.err)")
        #expect(try s.json("GET", "/v1/workloads/\(running)").1["status"] == .string("running"))
        let forced = try kiln(s, ["rm", "--force", running])
        #expect(forced.status == 0, "\(forced.err)")
        #expect(forced.out == "\(running)\n")
        #expect(try s.request("GET", "/v1/workloads/\(running)").status == 404)
        let done = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo hi"}"#)["id"]!.stringValue!
        #expect(try kiln(s, ["rm", done]).status == 0)
        #expect(try s.request("GET", "/v1/workloads/\(done)").status == 404)
        #expect(try kiln(s, ["rm", done]).status != 0)
    }

    @Test func runFollowShowsTheLinesThenTheResult() throws {
        let s = try KilnServer.start()
        let r = try kiln(s, ["run", "--follow", "--runtime", "shell", "--isolation", "process",
                             "--code", "for i in 1 2 3; do echo step $i; sleep 0.2; done; echo oops >&2; exit 4"])
        #expect(r.status == 4)
        #expect(r.out == "step 1\nstep 2\nstep 3\n")
        #expect(r.err.contains("oops"))
        #expect(r.err.contains("exit 4"))
    }

    /// Ctrl-C on `kiln run` kills the workload it started (it ran on after the CLI was gone),
    /// and the CLI exits 130.
    @Test func ctrlCKillsTheWorkloadKilnRunStarted() throws {
        let s = try KilnServer.start()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: KilnServer.binary)
        p.arguments = ["run", "--runtime", "shell", "--isolation", "process", "--code", "echo started; sleep 60", "--server", s.baseURL]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        var id: String? = nil
        let deadline = Date().addingTimeInterval(30)
        while id == nil {
            try #require(Date() < deadline, "the workload did not start within 30 s")
            id = try s.json("GET", "/v1/workloads?status=running").1["workloads"]?.arrayValue?.first?["id"]?.stringValue
            if id == nil { usleep(50_000) }
        }
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        #expect(p.terminationStatus == 130)
        let r = try s.waitTerminal(try #require(id), timeout: 30)
        #expect(r["status"] == .string("killed"), "\(r.text)")
    }

    @Test func asyncThenLogsFollowStopsAtTheEndWithTheExitCode() throws {
        let s = try KilnServer.start()
        let submitted = try kiln(s, ["run", "--async", "--runtime", "shell", "--isolation", "process", "--code", "echo a; sleep 0.5; echo b; exit 5"])
        #expect(submitted.status == 0)
        let id = submitted.out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ULIDGenerator.isValid(id))
        let followed = try kiln(s, ["logs", "-f", id])
        #expect(followed.status == 5)
        #expect(followed.out == "a\nb\n")
        let tail = try kiln(s, ["logs", "--tail", "1", id])
        #expect(tail.out == "b\n")
        let all = try kiln(s, ["logs", "--json", id])
        let lines = try all.out.split(separator: "\n").map { try JSON.parse(Array($0.utf8)) }
        #expect(lines.count == 2)
        // --json keeps each line's ts, as the API gives it.
        #expect(lines.allSatisfy { $0["ts"]?.stringValue.flatMap(Millis.parse) ?? 0 > 0 }, "\(all.out)")
        // run --follow --json prints the lines as JSON, then the record.
        let followedJSON = try kiln(s, ["run", "--follow", "--json", "--runtime", "shell", "--isolation", "process", "--code", "echo x; echo y"])
        let printed = try followedJSON.out.split(separator: "\n").map { try JSON.parse(Array($0.utf8)) }
        #expect(printed.count == 3 && printed[0]["line"] == .string("x") && printed[1]["line"] == .string("y"), "\(followedJSON.out)")
        #expect(printed.last?["status"] == .string("completed"))
        let status = try kiln(s, ["status", id])
        #expect(status.out.contains("failed"))
        let ls = try kiln(s, ["ls"])
        #expect(ls.out.hasPrefix("ID"))
        #expect(ls.out.contains(id))
        let lsJSON = try kiln(s, ["ls", "--json", "--status", "failed"])
        #expect(try JSON.parse(lsJSON.out)["workloads"]?.arrayValue?.count == 1)
        #expect(try kiln(s, ["backends"]).out.contains("process"))
        // This workload and the run --follow --json one.
        #expect(try kiln(s, ["stats"]).out.contains("total 2"))
    }

    @Test func logsFollowReconnectsAfterADroppedConnectionWithoutLossOrRepeats() throws {
        let s = try KilnServer.start()
        let id = try s.submit(#"{"runtime": "python", "isolation": "process", "code": "import time\nfor i in range(1, 2001):\n    print(f'line {i}', flush=True)\n    time.sleep(0.001)"}"#)
        try s.waitRunning(id)
        // The client talks through a proxy; killing the proxy drops its connection while
        // the server and the workload go on.
        var proxy = try TCPProxy(listen: 0, target: s.port)
        let port = proxy.port
        let out = KilnServer.tempDir() + "/follow.out"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        let follower = Process()
        follower.executableURL = URL(fileURLWithPath: KilnServer.binary)
        follower.arguments = ["logs", "-f", id, "--server", "http://127.0.0.1:\(port)"]
        follower.standardOutput = FileHandle(forWritingAtPath: out)
        follower.standardError = FileHandle.nullDevice
        try follower.run()
        for _ in 0..<3 {
            usleep(400_000)
            proxy.stop()
            usleep(300_000)
            proxy = try TCPProxy(listen: port, target: s.port)
        }
        follower.waitUntilExit()
        proxy.stop()
        #expect(follower.terminationStatus == 0)
        let printed = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(printed == (1...2000).map { "line \($0)" })
    }

    @Test func errorsAreOneClearLine() throws {
        let s = try KilnServer.start(token: "t-\(UUID().uuidString)")
        let missing = try kiln(s, ["status", "01M8BKXHHPAZQSGBQTA3DEZGVK"])
        // 125, as docker's own failures: never the same as a workload's exit 1.
        #expect(missing.status == 125)
        #expect(missing.err.split(separator: "\n").count == 1)
        #expect(missing.err.contains("404"))
        let unauthorized = try Curl.exec(KilnServer.binary, ["ls", "--server", s.baseURL])
        #expect(unauthorized.0 == 125)
        #expect(String(decoding: unauthorized.2, as: UTF8.self).contains("401"))
        let unreachable = try kiln(nil, ["ls"], server: "http://127.0.0.1:1")
        #expect(unreachable.status == 125)
        #expect(unreachable.err.hasPrefix("kiln: cannot reach"))
        // Following against a server that is not there fails on its first request, saying
        // so, not after 30 reconnects ("the log stream keeps dropping", 41 s).
        let unreachableFollow = try kiln(nil, ["logs", "-f", "01M8BKXHHPAZQSGBQTA3DEZGVK"], server: "http://127.0.0.1:1")
        #expect(unreachableFollow.status == 125 && unreachableFollow.err.hasPrefix("kiln: cannot reach"), "\(unreachableFollow.err)")
        let bad = try kiln(s, ["run", "--runtime", "cobol", "--code", "x"])
        #expect(bad.status == 125)
        #expect(bad.err.contains("422"))
        // An id is one path segment: ../../healthz is not /healthz.
        let traversal = try kiln(s, ["logs", "../../healthz"])
        #expect(traversal.status == 125 && traversal.err.contains("404"), "\(traversal.status) \(traversal.err)")
        let negative = try kiln(s, ["logs", "--tail=-3", "01M8BKXHHPAZQSGBQTA3DEZGVK"])
        #expect(negative.status != 0 && negative.err.contains("--tail must be 0 or more"), "\(negative.err)")
    }
}

/// Tests/tools/tcpproxy.py: a forwarder whose death drops every connection through it.
struct TCPProxy {
    let process: Process
    let port: Int

    init(listen: Int, target: Int) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "\(KilnServer.packageRoot)/Tests/tools/tcpproxy.py", String(listen), String(target)]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = [UInt8]()
        while true {
            let byte = pipe.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty || byte.first == 0x0A { break }
            line += byte
        }
        guard let p = Int(String(decoding: line, as: UTF8.self)) else { throw TestFailure("proxy did not start") }
        port = p
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
