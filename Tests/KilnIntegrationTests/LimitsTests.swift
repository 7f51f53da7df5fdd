import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// The kernel-enforced limits of a workload's cgroup, tried as a hostile tenant would,
/// on each backend that runs workloads as processes of this host.
struct CgroupChecks {
    let backend: String

    func run(_ s: KilnServer, _ runtime: String, _ code: String, _ resources: [(String, JSON)]) throws -> JSON {
        try s.run(JSON.object([("runtime", .string(runtime)), ("isolation", .string(backend)), ("code", .string(code)),
                               ("resources", .object(resources))]).text)
    }

    func theBackendSaysItUsesACgroup() throws {
        let s = try IsolationServer.server(for: backend)
        let list = try s.json("GET", "/v1/backends").1["backends"]?.arrayValue ?? []
        let entry = list.first { $0["name"] == .string(backend) }
        let how = entry?["limits"]?["cgroup"]?.stringValue ?? ""
        #expect(how.hasPrefix("cgroup v1") || how.hasPrefix("cgroup v2"), "\(backend): \(how)")
        #expect(entry?["limits"]?["pids"]?.stringValue?.contains("its cgroup") == true)
    }

    /// Sixteen processes of 60 MiB each under mem_mb 128: each is far below RLIMIT_AS, and
    /// only a limit on the workload as a whole stops them.
    func memoryCountsEveryProcess() throws {
        let s = try IsolationServer.server(for: backend)
        let code = """
            import os, sys, time
            children = []
            for i in range(16):
                pid = os.fork()
                if pid == 0:
                    block = b"x" * (60 << 20)
                    time.sleep(2)
                    os._exit(0)
                children.append(pid)
            ok = 0
            for pid in children:
                _, status = os.waitpid(pid, 0)
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0: ok += 1
            print(f"{ok} of 16 held their memory", flush=True)
            sys.exit(0 if ok == 16 else 1)
            """
        let r = try run(s, "python", code, [("mem_mb", .int(128))])
        #expect(r["status"] == .string("failed"), "\(r.text)")
        #expect(r["error"]?.stringValue?.contains("memory limit of 128 MB exceeded") == true, "\(r.text)")
        #expect(r["output"]?.stringValue?.contains("16 of 16") != true)
    }

    /// A fork loop stops at `pids`, and the server and other workloads are fine.
    func aForkLoopStopsAtPids() throws {
        let s = try IsolationServer.server(for: backend)
        let code = """
            import os, time
            n = 0
            try:
                for i in range(500):
                    if os.fork() == 0:
                        time.sleep(3)
                        os._exit(0)
                    n += 1
                print(f"forked all {n}")
            except OSError as e:
                print(f"stopped after {n}: errno {e.errno}")
            """
        let r = try run(s, "python", code, [("pids", .int(32))])
        let text = r["output"]?.stringValue ?? ""
        #expect(text.hasPrefix("stopped after"), "\(r.text)")
        let forked = Int(text.split(separator: " ").dropFirst(2).first?.dropLast() ?? "") ?? 999
        #expect(forked < 32, "forked \(forked) with pids 32")
        // The rest of the host is untouched.
        #expect(try run(s, "shell", "echo fine", [])["output"] == .string("fine\n"))
    }

    /// Leftovers of a finished workload are gone: a daemonized grandchild and the cgroup.
    func theCgroupIsEmptiedAndRemovedAtTheEnd() throws {
        let s = try IsolationServer.server(for: backend)
        let tag = "kiln-cg-\(UUID().uuidString.prefix(8))"
        let r = try run(s, "shell", "(setsid sh -c 'sleep 600' \(tag) &); echo started", [])
        #expect(r["status"] == .string("completed"))
        let id = r["id"]?.stringValue ?? ""
        var gone = false
        for _ in 0..<100 where !gone {
            gone = !ProcessTable.exists(tag)
            if !gone { usleep(20_000) }
        }
        #expect(gone, "a grandchild outlived its workload")
        let folders = ["/sys/fs/cgroup/memory/kiln/\(id)", "/sys/fs/cgroup/pids/kiln/\(id)", "/sys/fs/cgroup/kiln/\(id)"]
        #expect(folders.allSatisfy { !FileManager.default.fileExists(atPath: $0) })
    }
}

@Suite(.enabled(if: getuid() == 0, "needs root, for a cgroup per workload"), .enabled(if: Backends.runnable("process"), "needs the process backend"),
       .timeLimit(.minutes(5)), .ownThread)
struct ProcessLimitsTests {
    let checks = CgroupChecks(backend: "process")
    @Test func theBackendSaysItUsesACgroup() throws { try checks.theBackendSaysItUsesACgroup() }
    @Test func memoryCountsEveryProcess() throws { try checks.memoryCountsEveryProcess() }
    @Test func aForkLoopStopsAtPids() throws { try checks.aForkLoopStopsAtPids() }
    @Test func theCgroupIsEmptiedAndRemovedAtTheEnd() throws { try checks.theCgroupIsEmptiedAndRemovedAtTheEnd() }
}

@Suite(.enabled(if: getuid() == 0, "needs root, for a cgroup per workload"), .enabled(if: Backends.runnable("sandbox"), "needs the sandbox backend (bubblewrap, as root)"),
       .timeLimit(.minutes(5)), .ownThread)
struct SandboxLimitsTests {
    let checks = CgroupChecks(backend: "sandbox")
    @Test func theBackendSaysItUsesACgroup() throws { try checks.theBackendSaysItUsesACgroup() }
    @Test func memoryCountsEveryProcess() throws { try checks.memoryCountsEveryProcess() }
    @Test func aForkLoopStopsAtPids() throws { try checks.aForkLoopStopsAtPids() }
    @Test func theCgroupIsEmptiedAndRemovedAtTheEnd() throws { try checks.theCgroupIsEmptiedAndRemovedAtTheEnd() }

    /// Files in the sandbox's /tmp (a tmpfs) are memory the workload holds: 80 MiB there
    /// and a 40 MiB allocation do not fit in mem_mb 96, though each alone would.
    @Test func tmpfsFilesCountAsTheWorkloadsMemory() throws {
        let s = try IsolationServer.server(for: "sandbox")
        let code = "head -c 83886080 /dev/zero > /tmp/fill && python3 -c \"b = b'x' * (40 << 20); print('allocated')\""
        let r = try checks.run(s, "shell", code, [("mem_mb", .int(96))])
        #expect(r["status"] == .string("failed"), "\(r.text)")
        #expect(r["error"]?.stringValue?.contains("memory limit of 96 MB exceeded") == true, "\(r.text)")
        #expect(r["output"]?.stringValue?.contains("allocated") != true)
    }
}

/// The per-workload log limit and bytes that C strings would cut.
@Suite(.enabled(if: Backends.runnable("gvisor"), "needs the gvisor backend (runsc)"), .timeLimit(.minutes(5)), .ownThread)
struct GVisorLimitsTests {
    let checks = CgroupChecks(backend: "gvisor")
    @Test func aForkLoopStopsAtPids() throws { try checks.aForkLoopStopsAtPids() }
}

@Suite(.timeLimit(.minutes(5)), .ownThread)
struct LogLimitTests {
    @Test func pastTheLogLimitOneMarkerIsKeptTheRestDiscardedAndTheWorkloadRunsOn() throws {
        let s = try KilnServer.start(env: ["KILN_MAX_LOG_BYTES": "2048"])
        let r = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "for i in $(seq 1000); do echo line-$i; done; exit 3"}"#)
        // It ran to its end: its exit code is its own.
        #expect(r["status"] == .string("failed"))
        #expect(r["exit_code"] == .int(3))
        #expect(r["log_truncated"] == .bool(true))
        let id = r["id"]?.stringValue ?? ""
        let history = try s.json("GET", "/v1/workloads/\(id)/logs/history?limit=10000").1["lines"]?.arrayValue ?? []
        let texts = history.compactMap { $0["line"]?.stringValue }
        let marker = "kiln: log limit of 2048 bytes reached; further output discarded"
        #expect(texts.last == marker)
        let kept = texts.dropLast()
        #expect(kept == (1...kept.count).map { "line-\($0)" }[...])
        #expect(kept.reduce(0) { $0 + $1.utf8.count } <= 2048)
        #expect(kept.count > 100 && kept.count < 1000)
        #expect(r["log_lines"] == .int(Int64(texts.count)))
        // The stream says the same.
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs")
        #expect(c.eventLines == texts)
        // Without a limit reached, the flag is false.
        #expect(try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo short"}"#)["log_truncated"] == .bool(false))
    }

    @Test func aNulByteIsStoredAndStreamedAsItWasPrinted() throws {
        let s = try KilnServer.start()
        let r = try s.run(#"{"runtime": "python", "isolation": "process", "code": "import sys\nsys.stdout.write('nul\\0hidden\\n')"}"#)
        #expect(r["status"] == .string("completed"), "\(r.text)")
        let id = r["id"]?.stringValue ?? ""
        let stored = try s.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue?.first?["line"]?.stringValue
        #expect(stored == "nul\u{0}hidden")
        let c = try SSEClient.first("\(s.baseURL)/v1/workloads/\(id)/logs?format=json")
        let streamed = c["events"]?.arrayValue?.first?["data"]?.arrayValue?.first?.stringValue.flatMap { try? JSON.parse($0) }?["line"]?.stringValue
        #expect(streamed == stored)
    }
}
