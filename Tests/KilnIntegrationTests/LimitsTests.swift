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

    /// Writes stop at `disk_mb` with ENOSPC inside, and what was written is in a tmpfs, not
    /// on the server's disk. Sandboxed backends count `/tmp` in the same bound; the process
    /// backend's `/tmp` is the host's (it runs with the server's rights), so only its work
    /// folder is checked.
    func writesStopAtDiskMB(tmpShares: Bool, tmpfsVisible: Bool = true) throws {
        let s = try IsolationServer.server(for: backend)
        var code = ""
        if tmpShares { code += "head -c 12582912 /dev/zero > /tmp/a && echo tmp-ok; " }
        if tmpfsVisible { code += "echo fs=$(stat -f -c %T .); " }
        code += "{ head -c 33554432 /dev/zero > big; } 2>&1; echo rc=$?; echo size=$(wc -c < big)"
        let r = try run(s, "shell", code, [("disk_mb", .int(16))])
        let text = r["output"]?.stringValue ?? ""
        #expect(text.contains("No space left on device"), "\(backend): \(r.text)")
        #expect(!text.contains("rc=0"), "\(backend): \(r.text)")
        if tmpfsVisible { #expect(text.contains("fs=tmpfs"), "\(backend): \(r.text)") }
        let size = Int(text.components(separatedBy: "size=").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
        let room = (tmpShares ? 4 : 16) << 20
        #expect(size >= 0 && size <= room, "\(backend): wrote \(size) bytes with \(room) left of disk_mb 16")
        if tmpShares { #expect(text.contains("tmp-ok"), "\(backend): \(r.text)") }
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
    @Test func writesStopAtDiskMB() throws { try checks.writesStopAtDiskMB(tmpShares: false) }
}

@Suite(.enabled(if: getuid() == 0, "needs root, for a cgroup per workload"), .enabled(if: Backends.runnable("sandbox"), "needs the sandbox backend (bubblewrap, as root)"),
       .timeLimit(.minutes(5)), .ownThread)
struct SandboxLimitsTests {
    let checks = CgroupChecks(backend: "sandbox")
    @Test func theBackendSaysItUsesACgroup() throws { try checks.theBackendSaysItUsesACgroup() }
    @Test func memoryCountsEveryProcess() throws { try checks.memoryCountsEveryProcess() }
    @Test func aForkLoopStopsAtPids() throws { try checks.aForkLoopStopsAtPids() }
    @Test func theCgroupIsEmptiedAndRemovedAtTheEnd() throws { try checks.theCgroupIsEmptiedAndRemovedAtTheEnd() }
    @Test func writesStopAtDiskMB() throws { try checks.writesStopAtDiskMB(tmpShares: true) }

    /// Per-user kernel state, tried as a hostile tenant would: one workload takes every
    /// inotify instance its uid may have (max_user_instances) and holds them; a second
    /// workload meanwhile still gets as many, because it runs as another host uid.
    @Test func twoSandboxWorkloadsRunAsDifferentHostUidsAndShareNoPerUserLimit() throws {
        let s = try IsolationServer.server(for: "sandbox")
        let run = UUID().uuidString.prefix(8)
        /// Takes every inotify instance it can, starts a tagged sleeper (so the test can read
        /// its host uid from /proc), says how many it holds, and holds them.
        func start(_ tag: String) throws -> String {
            let code = """
                import ctypes, subprocess, time
                libc = ctypes.CDLL(None, use_errno=True)
                fds = []
                while len(fds) < 100000:
                    fd = libc.inotify_init()
                    if fd < 0: break
                    fds.append(fd)
                subprocess.Popen(["sh", "-c", "sleep 60", "\(tag)"])
                print("holding", len(fds), flush=True)
                time.sleep(60)
                """
            let id = try s.submit(JSON.object([("runtime", .string("python")), ("isolation", .string("sandbox")), ("code", .string(code))]).text)
            return try firstLine(s, id)
        }
        func hostUID(_ tag: String) -> Int? {
            guard let pid = ProcessTable.pids(containing: tag).first,
                  let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
            return Int(line.split(separator: "\t")[1])
        }
        let first = try start("kiln-uid-a-\(run)")
        let second = try start("kiln-uid-b-\(run)")
        let uids = [hostUID("kiln-uid-a-\(run)"), hostUID("kiln-uid-b-\(run)")]
        for w in try s.json("GET", "/v1/workloads?status=running").1["workloads"]?.arrayValue ?? [] {
            _ = try s.request("DELETE", "/v1/workloads/\(w["id"]?.stringValue ?? "")")
        }
        #expect(first.hasPrefix("holding ") && first != "holding 0", "\(first)")
        #expect(second == first, "the first holds \(first); the second got \(second)")
        #expect(uids[0] != nil && uids[0] != uids[1], "host uids \(uids)")
        for uid in uids { #expect((200_000...265_535).contains(uid ?? 0), "host uid \(uid ?? -1)") }
    }

    /// The first line workload `id` logs (stored), once it has one.
    func firstLine(_ s: KilnServer, _ id: String) throws -> String {
        let deadline = Date().addingTimeInterval(30)
        while true {
            let lines = try s.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue ?? []
            if let line = lines.first?["line"]?.stringValue { return line }
            try #require(Date() < deadline, "workload \(id) did not report within 30 s")
            usleep(50_000)
        }
    }

    /// Keys one workload adds to its user keyring are not visible to another workload in
    /// /proc/keys (with one uid for all, the other saw every key's name).
    @Test func oneWorkloadsKeysAreNotVisibleToAnother() throws {
        let s = try IsolationServer.server(for: "sandbox")
        let name = "kiln-key-\(UUID().uuidString.prefix(8))"
        let holder = """
            import ctypes, time
            libc = ctypes.CDLL(None, use_errno=True)
            # add_key(2) into the user keyring (KEY_SPEC_USER_KEYRING = -4)
            serial = libc.syscall(248, b"user", b"\(name)", b"x", 1, -4)
            print("added", serial, "seen" if "\(name)" in open("/proc/keys").read() else "unseen", flush=True)
            time.sleep(30)
            """
        let first = try s.submit(JSON.object([("runtime", .string("python")), ("isolation", .string("sandbox")), ("code", .string(holder))]).text)
        let added = try firstLine(s, first)
        let other = try checks.run(s, "shell", "cat /proc/keys; echo end", [])
        _ = try s.request("DELETE", "/v1/workloads/\(first)")
        #expect(added.hasPrefix("added ") && added.hasSuffix(" seen"), "\(added)")
        #expect(other["output"]?.stringValue?.hasSuffix("end\n") == true, "\(other.text)")
        #expect(other["output"]?.stringValue?.contains(name) == false, "another workload saw the key: \(other.text)")
    }

    /// A private database folder (mode 0700) does not make the sandbox unavailable: the
    /// sandbox's uids cannot enter it, so state and work folders live elsewhere.
    @Test func theSandboxWorksWithAPrivateDatabaseFolder() throws {
        let folder = KilnServer.tempDir("kiln-private") + "/db"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let s = try KilnServer.start(db: folder + "/kiln.db", isolation: "sandbox")
        try IsolationServer.require(s, "sandbox")
        let r = try checks.run(s, "shell", "echo inside; id -u", [])
        #expect(r["status"] == .string("completed") && r["output"] == .string("inside\n65534\n"), "\(r.text)")
        let mode = try FileManager.default.attributesOfItem(atPath: folder)[.posixPermissions] as? Int
        #expect(mode == 0o700, "the database folder's mode was changed")
    }

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
    @Test(.enabled(if: getuid() == 0, "needs root, for a tmpfs work folder"))
    func writesStopAtDiskMB() throws { try checks.writesStopAtDiskMB(tmpShares: true, tmpfsVisible: false) }
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
