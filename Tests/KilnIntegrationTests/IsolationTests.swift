import Foundation
import Testing
import KilnCore
import KilnTestSupport

enum IsolationServer {
    /// A server that has `backend`. Tests that call this are enabled only where the backend
    /// is available (`Backends.runnable`), or where it is required: then its absence fails.
    static func server(for backend: String) throws -> KilnServer {
        let s = try KilnServer.start(env: ["KILN_MAX_CONCURRENT": "24"], isolation: KilnServer.allBackends)
        try require(s, backend)
        return s
    }

    static func require(_ s: KilnServer, _ backend: String) throws {
        let list = try s.json("GET", "/v1/backends").1["backends"]?.arrayValue ?? []
        guard let b = list.first(where: { $0["name"] == .string(backend) }) else { throw TestFailure("no backend \(backend) listed") }
        guard b["available"] == .bool(true) else {
            throw TestFailure("backend \(backend) is unavailable: \(b["reason"]?.stringValue ?? "no reason given")")
        }
    }
}

/// Real escape attempts against the isolating backends that run processes: the checks,
/// run by one suite per backend below.
struct EscapeChecks {
    /// A Python probe that tries each escape and reports what happened.
    static func probe(secret: String, marker: String, port: Int, hostTmp: String) -> String {
        """
        import json, os, socket
        r = {}
        def attempt(name, fn):
            try:
                r[name] = "allowed: " + str(fn())[:100]
            except Exception as e:
                r[name] = "refused: " + type(e).__name__
        attempt("shadow", lambda: open("/etc/shadow").read())
        attempt("secret", lambda: open("\(secret)").read())
        attempt("root_home", lambda: os.listdir("/root"))
        def write(path):
            with open(path, "w") as f: f.write("x")
            return path
        attempt("write_usr", lambda: write("/usr/kiln-escape"))
        attempt("write_etc", lambda: write("/etc/kiln-escape"))
        attempt("write_root", lambda: write("/kiln-escape"))
        attempt("write_host_tmp", lambda: write("\(hostTmp)"))
        attempt("write_work", lambda: write("inside-work"))
        def connect():
            s = socket.create_connection(("127.0.0.1", \(port)), timeout=2)
            s.sendall(b"escaped")
            return "connected"
        attempt("tcp", connect)
        def seen():
            found = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        if b"\(marker)" in open(f"/proc/{pid}/cmdline", "rb").read(): found.append(pid)
                    except Exception: pass
            if found: return found
            raise LookupError("not visible")
        attempt("host_process", seen)
        print(json.dumps(r))
        """
    }

    func escapeAttemptsAreRefused(_ backend: String) throws {
        let s = try IsolationServer.server(for: backend)
        let tag = UUID().uuidString.prefix(8)
        let secret = "/root/kiln-secret-\(tag)"
        try Data("top secret".utf8).write(to: URL(fileURLWithPath: secret))
        defer { try? FileManager.default.removeItem(atPath: secret) }
        let hostTmp = "/tmp/kiln-escape-\(tag)"
        let marker = "kiln-host-marker-\(tag)"
        let hostProcess = Process()
        hostProcess.executableURL = URL(fileURLWithPath: "/bin/sh")
        hostProcess.arguments = ["-c", "sleep 60", marker]
        hostProcess.standardOutput = FileHandle.nullDevice
        hostProcess.standardError = FileHandle.nullDevice
        try hostProcess.run()
        defer { hostProcess.terminate() }
        let listener = try Listener()
        defer { listener.stop() }

        let code = Self.probe(secret: secret, marker: marker, port: listener.port, hostTmp: hostTmp)
        let body = JSON.object([("runtime", .string("python")), ("code", .string(code)), ("isolation", .string(backend))]).text
        let r = try s.run(body)
        #expect(r["status"] == .string("completed"), "\(r.text)")
        #expect(r["isolation_used"] == .string(backend))
        let out = r["output"] ?? .null
        for key in ["shadow", "secret", "root_home", "write_usr", "write_etc", "write_root", "tcp", "host_process"] {
            #expect(out[key]?.stringValue?.hasPrefix("refused") == true, "\(backend) \(key): \(out[key]?.text ?? "missing")")
        }
        #expect(out["write_work"]?.stringValue?.hasPrefix("allowed") == true)
        // A private /tmp: whatever the workload wrote there is not on the host.
        #expect(!FileManager.default.fileExists(atPath: hostTmp))
        #expect(listener.connections == 0)
    }

    func shellAndNodeRunInside(_ backend: String) throws {
        let s = try IsolationServer.server(for: backend)
        let sh = try s.run(JSON.object([("runtime", .string("shell")), ("isolation", .string(backend)),
                                        ("code", .string("cat; echo; id -u; cat /etc/shadow 2>&1 || true")), ("input", .object([("k", .int(1))]))]).text)
        let lines = sh["output"]?.stringValue?.split(separator: "\n").map(String.init) ?? []
        #expect(lines.first == #"{"k":1}"#)
        #expect(lines.dropFirst().first == "65534")
        #expect(sh["output"]?.stringValue?.contains("root:") == false)
        let node = try s.run(JSON.object([("runtime", .string("node")), ("isolation", .string(backend)),
                                          ("code", .string("const fs = require('fs'); let r; try { fs.readFileSync('/etc/shadow'); r = 'read' } catch (e) { r = e.code } console.log(JSON.stringify({r}))"))]).text)
        #expect(node["output"] == .object([("r", .string("ENOENT"))]) || node["output"] == .object([("r", .string("EACCES"))]))
    }

    func exceedingMemoryFailsWithAClearError(_ backend: String) throws {
        let s = try IsolationServer.server(for: backend)
        let r = try s.run(JSON.object([("runtime", .string("python")), ("isolation", .string(backend)),
                                       ("code", .string("x = bytearray(400 * 1024 * 1024)\nprint('allocated')")),
                                       ("resources", .object([("mem_mb", .int(64))]))]).text)
        #expect(r["status"] == .string("failed"))
        #expect(r["error"]?.stringValue?.contains("memory limit of 64 MB exceeded") == true, "\(r.text)")
    }

    func exceedingTheTimeoutEndsTheSandbox(_ backend: String) throws {
        let s = try IsolationServer.server(for: backend)
        let tag = UUID().uuidString.prefix(8)
        let r = try s.run(JSON.object([("runtime", .string("shell")), ("isolation", .string(backend)),
                                       ("code", .string("echo start; sh -c 'sleep 600' kiln-inner-\(tag) & sleep 600")),
                                       ("resources", .object([("timeout_s", .int(2))]))]).text)
        #expect(r["status"] == .string("failed"))
        #expect(r["error"]?.stringValue?.contains("timed out") == true)
        usleep(300_000)
        #expect(!ProcessTable.exists("kiln-inner-\(tag)"))
        #expect(!ProcessTable.exists(r["id"]!.stringValue!))
    }

    func deleteEndsTheSandbox(_ backend: String) throws {
        let s = try IsolationServer.server(for: backend)
        let id = try s.submit(JSON.object([("runtime", .string("shell")), ("isolation", .string(backend)),
                                           ("code", .string("echo up; sleep 600"))]).text)
        var up = false
        for _ in 0..<500 where !up {
            up = (try s.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue?.count ?? 0) > 0
            if !up { usleep(20_000) }
        }
        #expect(up)
        let (status, r) = try s.json("DELETE", "/v1/workloads/\(id)")
        #expect(status == 200)
        #expect(r["status"] == .string("killed"))
        usleep(300_000)
        #expect(!ProcessTable.exists(id))
    }
}

/// Escape attempts and robustness of the V8 isolate backend.
@Suite(.enabled(if: Backends.runnable("sandbox"), "needs the sandbox backend (bubblewrap, as root)"), .timeLimit(.minutes(5)), .ownThread)
struct SandboxEscapeTests {
    @Test func escapeAttemptsAreRefused() throws { try EscapeChecks().escapeAttemptsAreRefused("sandbox") }
    @Test func shellAndNodeRunInside() throws { try EscapeChecks().shellAndNodeRunInside("sandbox") }
    @Test func exceedingMemoryFailsWithAClearError() throws { try EscapeChecks().exceedingMemoryFailsWithAClearError("sandbox") }
    @Test func exceedingTheTimeoutEndsTheSandbox() throws { try EscapeChecks().exceedingTheTimeoutEndsTheSandbox("sandbox") }
    @Test func deleteEndsTheSandbox() throws { try EscapeChecks().deleteEndsTheSandbox("sandbox") }
}

@Suite(.enabled(if: Backends.runnable("gvisor"), "needs the gvisor backend (runsc, as root)"), .timeLimit(.minutes(5)), .ownThread)
struct GVisorEscapeTests {
    @Test func escapeAttemptsAreRefused() throws { try EscapeChecks().escapeAttemptsAreRefused("gvisor") }
    @Test func shellAndNodeRunInside() throws { try EscapeChecks().shellAndNodeRunInside("gvisor") }
    @Test func exceedingMemoryFailsWithAClearError() throws { try EscapeChecks().exceedingMemoryFailsWithAClearError("gvisor") }
    @Test func exceedingTheTimeoutEndsTheSandbox() throws { try EscapeChecks().exceedingTheTimeoutEndsTheSandbox("gvisor") }
    @Test func deleteEndsTheSandbox() throws { try EscapeChecks().deleteEndsTheSandbox("gvisor") }
}

@Suite(.enabled(if: Backends.runnable("isolate"), "needs the isolate backend (Node 20)"), .timeLimit(.minutes(5)), .ownThread)
struct IsolateBackendTests {
    func run(_ s: KilnServer, _ code: String, input: JSON = .null, mem: Int? = nil, timeout: Int? = nil) throws -> JSON {
        var resources: [(String, JSON)] = []
        if let mem { resources.append(("mem_mb", .int(Int64(mem)))) }
        if let timeout { resources.append(("timeout_s", .int(Int64(timeout)))) }
        return try s.run(JSON.object([("runtime", .string("node")), ("isolation", .string("isolate")), ("code", .string(code)),
                                      ("input", input), ("resources", .object(resources))]).text)
    }

    /// ArrayBuffers are off V8's heap, outside resourceLimits: the host's RSS watch stops
    /// them. Through the server (as root the host runs in a PID namespace of its own while
    /// /proc is the host's, which once turned the watch off without a word).
    @Test func offHeapMemoryIsStoppedAtMemMB() throws {
        let s = try IsolationServer.server(for: "isolate")
        let r = try run(s, "export default () => { const held = []; for (let i = 0; i < 32; i++) held.push(new Uint8Array(64 << 20).fill(1)); return held.length }",
                        mem: 64, timeout: 60)
        #expect(r["status"] == .string("failed"), "\(r.text)")
        #expect(r["error"]?.stringValue?.hasPrefix("memory limit of 64 MB exceeded") == true, "\(r.text)")
        #expect(try run(s, "export default () => 1 + 1")["output"] == .int(2))
    }

    @Test func defaultExportRunsWithInputAndLogsAsItGoes() throws {
        let s = try IsolationServer.server(for: "isolate")
        let r = try run(s, "export default async (input) => { console.log('one', input.n); console.error('two'); await null; return {sum: input.n + 1} }",
                        input: .object([("n", .int(41))]))
        #expect(r["status"] == .string("completed"))
        #expect(r["output"] == .object([("sum", .int(42))]))
        #expect(r["isolation_used"] == .string("isolate"))
        let lines = try s.json("GET", "/v1/workloads/\(r["id"]!.stringValue!)/logs/history").1["lines"]?.arrayValue ?? []
        #expect(lines.map { $0["line"] ?? .null } == [.string("one 41"), .string("two")])
        #expect(lines.map { $0["stream"] ?? .null } == [.string("stdout"), .string("stderr")])
        // auto routes node code with a default export here.
        let auto = try s.run(#"{"runtime": "node", "code": "export default () => 7"}"#)
        #expect(auto["isolation_used"] == .string("isolate"))
        #expect(auto["output"] == .int(7))
    }

    @Test(arguments: [
        "export default () => require('fs').readFileSync('/etc/passwd', 'utf8')",
        "export default () => process.env",
        "export default async () => (await import('node:child_process')).execSync('id').toString()",
        "export default () => this.constructor.constructor('return process')().env",
        "export default () => ({}).constructor.constructor('return process')().mainModule",
        "export default () => console.log.constructor('return process')().pid",
        "export default () => Object.getPrototypeOf(console).constructor.constructor('return globalThis.process')().version",
        "export default async () => { const r = await fetch('http://127.0.0.1:1/'); return r.status }",
        "import fs from 'node:fs'; export default () => fs.readdirSync('/')",
    ])
    func hostEscapesFail(_ code: String) throws {
        let s = try IsolationServer.server(for: "isolate")
        let r = try run(s, code)
        #expect(r["status"] == .string("failed"), "\(code) → \(r.text)")
        #expect(r["error"]?.stringValue?.isEmpty == false)
        let out = r["output"]?.text ?? ""
        #expect(!out.contains("root:x:0"))
        #expect(!out.contains("PATH"))
    }

    @Test func anInfiniteLoopIsStoppedAndTheHostKeepsServing() throws {
        let s = try IsolationServer.server(for: "isolate")
        let loop = try s.submit(#"{"runtime": "node", "isolation": "isolate", "code": "export default () => { while (true) {} }", "resources": {"timeout_s": 2}}"#)
        let other = try run(s, "export default () => 'still here'")
        #expect(other["output"] == .string("still here"))
        let r = try s.waitTerminal(loop)
        #expect(r["status"] == .string("failed"))
        #expect(r["error"]?.stringValue?.contains("timed out") == true)
        #expect(try run(s, "export default () => 1")["output"] == .int(1))
    }

    @Test func aGigabyteAllocationFailsClearlyAndTheHostSurvives() throws {
        let s = try IsolationServer.server(for: "isolate")
        let r = try run(s, "export default () => { const a = []; for (let i = 0; i < 1e9; i++) a.push({i}); return a.length }", mem: 64)
        #expect(r["status"] == .string("failed"))
        #expect(r["error"]?.stringValue?.contains("memory") == true, "\(r.text)")
        let big = try run(s, "export default () => new Array(1e9).fill(1).length", mem: 64)
        #expect(big["status"] == .string("failed"))
        #expect(try run(s, "export default () => 'alive'")["output"] == .string("alive"))
    }

    @Test func outputOver1MiBIsTruncatedAndFlagged() throws {
        let s = try IsolationServer.server(for: "isolate")
        let r = try run(s, "export default () => 'x'.repeat(2 * 1024 * 1024)")
        #expect(r["status"] == .string("completed"))
        #expect(r["output_truncated"] == .bool(true))
        #expect((r["output"]?.stringValue?.utf8.count ?? 0) == 1 << 20)
        // The start of the output's JSON text.
        #expect(r["output"]?.stringValue?.hasPrefix("\"xxxx") == true)
        // 50 MB: the host sends only its start, so the server never reads it whole.
        let huge = try run(s, "export default () => ({ big: 'y'.repeat(50 * 1000 * 1000) })")
        #expect(huge["status"] == .string("completed"), "\(huge.text.prefix(300))")
        #expect(huge["output_truncated"] == .bool(true))
        #expect(huge["output"]?.stringValue?.hasPrefix("{\"big\":\"yyyy") == true)
        #expect((huge["output"]?.stringValue?.utf8.count ?? 0) == 1 << 20)
    }

    @Test func killMakesItKilled() throws {
        let s = try IsolationServer.server(for: "isolate")
        let id = try s.submit(#"{"runtime": "node", "isolation": "isolate", "code": "export default async () => { console.log('waiting'); await new Promise(r => setTimeout(r, 60000)) }"}"#)
        try s.waitRunning(id)
        let (status, r) = try s.json("DELETE", "/v1/workloads/\(id)")
        #expect(status == 200)
        #expect(r["status"] == .string("killed"))
    }

    @Test func twentyConcurrentWorkloadsAllReturn() throws {
        let s = try IsolationServer.server(for: "isolate")
        let bodies = try Curl.parallel(20, ["-X", "POST", "--data-binary",
                                            #"{"runtime": "node", "isolation": "isolate", "code": "export default async (x) => { await new Promise(r => setTimeout(r, 200)); return x * 2 }", "input": 21}"#],
                                       url: s.baseURL + "/v1/workloads")
        let records = try bodies.map { try JSON.parse($0) }
        #expect(records.count == 20)
        #expect(records.allSatisfy { $0["status"] == .string("completed") && $0["output"] == .int(42) })
    }
}

/// A TCP listener on 127.0.0.1 that counts connections (a workload must not reach it).
final class Listener: @unchecked Sendable {
    let process: Process
    let port: Int
    let countFile: String

    init() throws {
        countFile = KilnServer.tempDir() + "/connections"
        let portFile = countFile + ".port"
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", """
            import socket, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
            open(sys.argv[2], "w").write(str(s.getsockname()[1]))
            n = 0
            while True:
                c, _ = s.accept(); n += 1
                open(sys.argv[1], "w").write(str(n)); c.close()
            """, countFile, portFile]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var port = 0
        for _ in 0..<250 where port == 0 {
            port = Int((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "") ?? 0
            if port == 0 { usleep(20_000) }
        }
        guard port > 0 else { throw TestFailure("listener did not start") }
        self.port = port
    }

    var connections: Int { Int((try? String(contentsOfFile: countFile, encoding: .utf8)) ?? "0") ?? 0 }

    /// SIGKILL: a SIGTERM was seen to leave listeners behind (the signal can arrive blocked
    /// from the test runner's thread).
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// Lifecycles of what the backends keep outside a single workload.
@Suite(.timeLimit(.minutes(5)), .ownThread) struct BackendLifecycleTests {
    @Test(.enabled(if: Backends.runnable("gvisor"), "needs the gvisor backend (runsc, as root)"))
    func gVisorLeftoversOfAKilledServerAreSweptAtTheNextStart() throws {
        let dir = KilnServer.tempDir()
        let first = try KilnServer.start(db: "\(dir)/kiln.db", isolation: KilnServer.allBackends)
        try IsolationServer.require(first, "gvisor")
        let id = try first.submit(#"{"runtime": "python", "isolation": "gvisor", "code": "import time\nprint('up', flush=True)\ntime.sleep(600)"}"#)
        var up = false
        for _ in 0..<500 where !up {
            up = (try first.json("GET", "/v1/workloads/\(id)/logs/history").1["lines"]?.arrayValue?.count ?? 0) > 0
            if !up { usleep(20_000) }
        }
        #expect(up)
        let state = "\(dir)/state/gvisor/\(id)"
        #expect(FileManager.default.fileExists(atPath: state))
        first.stop(signal: SIGKILL)
        let second = try KilnServer.start(db: "\(dir)/kiln.db", isolation: KilnServer.allBackends)
        #expect(!FileManager.default.fileExists(atPath: state))
        #expect(!ProcessTable.exists(state))
        let (_, r) = try second.json("GET", "/v1/workloads/\(id)")
        #expect(r["error"] == .string("server restarted"))
    }

    @Test(.enabled(if: Backends.runnable("isolate"), "needs the isolate backend (Node 20)"))
    func theIsolateHostIsRestartedWhenItDies() throws {
        let s = try KilnServer.start()
        try IsolationServer.require(s, "isolate")
        let body = #"{"runtime": "node", "isolation": "isolate", "code": "export default () => 'ok'"}"#
        #expect(try s.run(body)["output"] == .string("ok"))
        // Kill every host process of this server (the supervisor and its executors).
        let hosts = ProcessTable.pids(containing: "\(URL(fileURLWithPath: s.dbPath).deletingLastPathComponent().path)/state/isolate/host.mjs")
        #expect(!hosts.isEmpty)
        for pid in hosts { kill(pid, SIGKILL) }
        usleep(300_000)
        var answered = false
        for _ in 0..<20 where !answered {
            let r = try s.run(body)
            answered = r["output"] == .string("ok")
            if !answered { usleep(200_000) }
        }
        #expect(answered)
    }
}
