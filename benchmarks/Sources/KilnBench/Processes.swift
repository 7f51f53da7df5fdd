import Foundation

/// Servers and workers alive now: stopped if kiln-bench itself is interrupted.
let liveChildren = Locked<Set<Int32>>([])
/// Temporary folders of live servers: removed if kiln-bench is interrupted.
let liveDirs = Locked<Set<String>>([])

/// On SIGINT or SIGTERM, stop every child this run started, then exit.
func installInterruptHandler() {
    for sig in [SIGINT, SIGTERM] {
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler {
            let pids = liveChildren.withLock { $0 }
            for p in pids { kill(p, SIGTERM) }
            log("interrupted: stopping \(pids.count) child processes")
            // Servers stop within 10 s; then remove their folders.
            let deadline = monoNs() + 12_000_000_000
            while monoNs() < deadline && pids.contains(where: { kill($0, 0) == 0 && !isZombie($0) }) { usleep(50_000) }
            for p in pids where kill(p, 0) == 0 && !isZombie(p) { kill(p, SIGKILL) }
            for d in liveDirs.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: d) }
            exit(130)
        }
        src.resume()
        interruptSources.withLock { $0.append(src) }
    }
}

func isZombie(_ pid: Int32) -> Bool {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return true }
    return s[s.index(after: close)...].hasPrefix(" Z")
}

private let interruptSources = Locked<[DispatchSourceSignal]>([])

/// A Kiln server started for one benchmark: its own temporary folder and database,
/// a free port on 127.0.0.1, stdout and stderr to files. B5 starts its peer (`kiln-peer`,
/// the same command line) through this too; `name` tells them apart in messages.
final class KilnServer: @unchecked Sendable {
    let binary: String
    let name: String
    let dir: String
    let process = Process()
    private(set) var port = 0

    var pid: Int32 { process.processIdentifier }

    /// `reuseDir`: start on the folder (and so the database) of an earlier server, which must
    /// have stopped: a restart (R2). Its earlier `server.out` and `server.err` are kept with a suffix.
    init(binary: String, name: String = "kiln", env extra: [String: String], reuseDir: String? = nil, db: String? = nil) throws {
        self.binary = binary
        self.name = name
        if let reuseDir {
            dir = reuseDir
            var n = 1
            while FileManager.default.fileExists(atPath: "\(dir)/server.out.\(n)") { n += 1 }
            for f in ["server.out", "server.err"] { try? FileManager.default.moveItem(atPath: "\(dir)/\(f)", toPath: "\(dir)/\(f).\(n)") }
        } else {
            var template = Array("/tmp/kiln-bench-XXXXXX".utf8CString)
            guard let p = mkdtemp(&template) else { throw WireError("mkdtemp failed") }
            dir = String(cString: p)
        }
        let d = dir
        liveDirs.withLock { _ = $0.insert(d) }
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", "--listen", "127.0.0.1:0", "--db", db ?? dir + "/kiln.db"]
        var env = ProcessInfo.processInfo.environment
        env["KILN_API_TOKEN"] = nil
        env["KILN_LOG_LEVEL"] = env["KILN_LOG_LEVEL"] ?? "warning"
        // The benchmarks measure Kiln's own overhead on the process backend, which the
        // server allows only when it is listed.
        env["KILN_ISOLATION"] = env["KILN_ISOLATION"] ?? "process,sandbox,gvisor,isolate"
        for (k, v) in extra { env[k] = v }
        process.environment = env
        _ = FileManager.default.createFile(atPath: dir + "/server.out", contents: nil)
        _ = FileManager.default.createFile(atPath: dir + "/server.err", contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: dir + "/server.out")
        process.standardError = FileHandle(forWritingAtPath: dir + "/server.err")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let spid = process.processIdentifier
        liveChildren.withLock { _ = $0.insert(spid) }
        // Wait for "kiln 0.1.0 listening on http://127.0.0.1:PORT" (the peer prints the same).
        let deadline = monoNs() + 30_000_000_000
        while monoNs() < deadline {
            if let s = try? String(contentsOfFile: dir + "/server.out", encoding: .utf8),
               let r = s.range(of: "listening on http://127.0.0.1:") {
                let rest = s[r.upperBound...].prefix { $0.isNumber }
                if let p = Int(rest) { port = p; break }
            }
            if !process.isRunning { break }
            usleep(20_000)
        }
        if port == 0 {
            let err = (try? String(contentsOfFile: dir + "/server.err", encoding: .utf8)) ?? ""
            stop()
            throw WireError("\(name) did not start: \(err.suffix(500))")
        }
        log("\(name) pid \(pid) on 127.0.0.1:\(port) (\(dir))")
    }

    /// VmRSS of the server in KiB, from /proc/PID/status.
    func rssKiB() -> Int { rssOf(pid: pid) }

    /// CPU seconds the server process has used so far.
    func cpuSeconds() -> Double { cpuSecondsOf(pid: pid) }

    /// Open file descriptors of the server.
    func openFDs() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    func stop() {
        defer { let p = pid; liveChildren.withLock { _ = $0.remove(p) } }
        guard process.isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = monoNs() + 15_000_000_000
        while process.isRunning && monoNs() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Sends `sig` (SIGKILL: a crash) and waits until the process is gone; the folder stays,
    /// so a new `KilnServer(..., reuseDir: dir)` restarts on the same database.
    func terminate(with sig: Int32) {
        defer { let p = pid; liveChildren.withLock { _ = $0.remove(p) } }
        guard process.isRunning else { return }
        kill(pid, sig)
        process.waitUntilExit()
    }

    /// Removes the temporary folder (database and logs).
    func cleanup() {
        let d = dir
        liveDirs.withLock { _ = $0.remove(d) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// CPU time (user + system, seconds) a process has used so far, from /proc/PID/stat.
func cpuSecondsOf(pid: Int32) -> Double {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return .nan }
    let f = s[s.index(after: close)...].split(separator: " ")
    // After the command: state is field 3, utime 14 and stime 15 (1-based, whole line).
    guard f.count > 13, let u = Double(f[11]), let k = Double(f[12]) else { return .nan }
    return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func rssOf(pid: Int32) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let n = line.split(separator: " ", omittingEmptySubsequences: true)
        if n.count >= 2, let v = Int(n[1]) { return v }
    }
    return -1
}

/// The path of this executable (workers are this binary's `sse-worker` subcommand).
func selfExecutable() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    if n > 0 { return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    return CommandLine.arguments[0]
}

/// One `kiln-bench sse-worker` child process: commands on its stdin, JSON lines on its stdout.
final class WorkerProcess: @unchecked Sendable {
    let process = Process()
    private let stdinPipe = Pipe()
    private let stdoutPipe = Pipe()
    private let lock = NSLock()
    private let cond = NSCondition()
    private var lines: [[String: Any]] = []
    private var rawResults: [Data] = []
    private var eof = false

    init(arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: selfExecutable())
        process.arguments = ["sse-worker"] + arguments
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        process.standardError = FileHandle.standardError
        try process.run()
        let wpid = process.processIdentifier
        liveChildren.withLock { _ = $0.insert(wpid) }
        let fh = stdoutPipe.fileHandleForReading
        let t = Thread { [self] in
            var pending = Data()
            while true {
                let chunk = fh.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 0x0A) {
                    let line = pending[pending.startIndex..<nl]
                    pending = Data(pending[(nl + 1)...])
                    guard let obj = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any] else { continue }
                    cond.lock()
                    if obj["event"] as? String == "result" { rawResults.append(Data(line)) }
                    lines.append(obj)
                    cond.broadcast()
                    cond.unlock()
                }
            }
            cond.lock()
            eof = true
            cond.broadcast()
            cond.unlock()
        }
        t.start()
    }

    func send(_ cmd: String) {
        try? stdinPipe.fileHandleForWriting.write(contentsOf: Data((cmd + "\n").utf8))
    }

    /// Waits for the next line with this event name (consumed), or nil at EOF/timeout.
    func waitFor(_ event: String, timeoutSeconds: Double) -> [String: Any]? {
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let i = lines.firstIndex(where: { $0["event"] as? String == event }) {
                return lines.remove(at: i)
            }
            if eof { return nil }
            if !cond.wait(until: deadline) { return nil }
        }
    }

    /// The final report (asks for it when `ask`), decoded.
    func result(ask: Bool, timeoutSeconds: Double) -> SSEReport? {
        if ask { send("report") }
        guard waitFor("result", timeoutSeconds: timeoutSeconds) != nil else { return nil }
        cond.lock()
        let raw = rawResults.popLast()
        cond.unlock()
        guard let raw,
              let outer = try? JSONDecoder().decode(ResultLine.self, from: raw) else { return nil }
        return outer.report
    }

    private struct ResultLine: Decodable { var report: SSEReport }

    func stop() {
        defer { let p = process.processIdentifier; liveChildren.withLock { _ = $0.remove(p) } }
        try? stdinPipe.fileHandleForWriting.close()
        let deadline = monoNs() + 10_000_000_000
        while process.isRunning && monoNs() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A set of SSE worker processes following one path.
final class SubscriberFleet: @unchecked Sendable {
    let workers: [WorkerProcess]
    let total: Int

    init(port: Int, path: String, count: Int, mode: SSEMode, expectedLines: Int, perProcess: Int,
         loops: Int?, deadlineSeconds: Double) throws {
        let procs = max(1, (count + perProcess - 1) / perProcess)
        let loopsEach = loops ?? (procs == 1 ? 2 : 1)
        var ws: [WorkerProcess] = []
        for i in 0..<procs {
            let n = count / procs + (i < count % procs ? 1 : 0)
            ws.append(try WorkerProcess(arguments: [
                "--port", "\(port)", "--path", path, "--count", "\(n)", "--mode", mode.rawValue,
                "--expected-lines", "\(expectedLines)", "--loops", "\(loopsEach)",
                "--deadline", "\(deadlineSeconds)",
            ]))
        }
        workers = ws
        total = count
    }

    /// Waits until every worker has made its connections; returns (ok, failed).
    func waitConnected(timeoutSeconds: Double) throws -> (Int, Int) {
        var ok = 0, failed = 0
        for w in workers {
            guard let l = w.waitFor("connected", timeoutSeconds: timeoutSeconds) else {
                throw WireError("a worker did not connect in \(timeoutSeconds) s")
            }
            ok += l["ok"] as? Int ?? 0
            failed += l["failed"] as? Int ?? 0
            if let errs = l["errors"] as? [String], !errs.isEmpty { log("connect errors: \(errs)") }
        }
        return (ok, failed)
    }

    func mark() {
        for w in workers { w.send("mark") }
        for w in workers { _ = w.waitFor("marked", timeoutSeconds: 30) }
    }

    /// Merged report; `ask` makes workers report now instead of when their streams end.
    func report(ask: Bool, timeoutSeconds: Double) -> SSEReport {
        var total = SSEReport()
        for w in workers { if ask { w.send("report") } }
        for w in workers {
            if let r = w.result(ask: false, timeoutSeconds: timeoutSeconds) { total.merge(r) }
            else { total.errors.append("a worker gave no report") }
        }
        return total
    }

    func stop() { for w in workers { w.stop() } }
}

/// Runs a tool to its end (killed after `timeoutSeconds`), its stdout and stderr together;
/// returns the exit status (128 + signal when killed by one) and the output.
func runTool(_ argv: [String], timeoutSeconds: Double) -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    let outPath = NSTemporaryDirectory() + "kiln-bench-tool-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: outPath) }
    guard let fh = FileHandle(forWritingAtPath: outPath) else { return (-1, "cannot create \(outPath)") }
    p.standardOutput = fh
    p.standardError = fh
    p.standardInput = FileHandle.nullDevice
    do { try p.run() } catch { return (-1, "\(error)") }
    let pid = p.processIdentifier
    liveChildren.withLock { _ = $0.insert(pid) }
    defer { liveChildren.withLock { _ = $0.remove(pid) } }
    let deadline = monoNs() + UInt64(timeoutSeconds * 1e9)
    while p.isRunning && monoNs() < deadline { usleep(50_000) }
    if p.isRunning {
        kill(pid, SIGKILL)
        p.waitUntilExit()
    }
    try? fh.close()
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    return (p.terminationReason == .exit ? p.terminationStatus : 128 + p.terminationStatus, out)
}
