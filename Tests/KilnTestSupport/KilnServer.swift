import Foundation
import KilnCore

/// A real `kiln serve` process on a free loopback port, with its own database.
public final class KilnServer: @unchecked Sendable {
    public let process: Process
    public let port: Int
    public let dbPath: String
    public let stdoutPath: String
    public let stderrPath: String
    public var baseURL: String { "http://127.0.0.1:\(port)" }
    public var token: String?

    /// The package root, found from this file's path.
    public static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    /// The `kiln` binary: `KILN_BIN`, else the debug build.
    public static var binary: String {
        ProcessInfo.processInfo.environment["KILN_BIN"] ?? "\(packageRoot)/.build/debug/kiln"
    }

    public static func tempDir(_ name: String = "kiln-test") -> String {
        let dir = NSTemporaryDirectory() + "\(name)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Every backend, `process` included. Tests of a backend, and of what `auto` picks, use it.
    public static let allBackends = "process,sandbox,gvisor,isolate"

    /// What most tests run with: every backend but gVisor, so that `auto` picks the sandbox
    /// for python and shell. Under `auto` with gVisor allowed, each of the suite's plain
    /// workloads started a gVisor sandbox (about 0.4 s of CPU each): on two cores that
    /// was the largest share of the suite's CPU, for tests that are not about gVisor.
    /// Tests of the default policy (`process` off unless listed) pass `isolation: nil`.
    public static let everydayBackends = "process,sandbox,isolate"

    /// Starts the server and waits for its "listening" line.
    public static func start(env: [String: String] = [:], args: [String] = [], db: String? = nil,
                             token: String? = nil, isolation: String? = everydayBackends) throws -> KilnServer {
        let dir = tempDir()
        let dbPath = db ?? "\(dir)/kiln.db"
        let out = "\(dir)/stdout.log"
        let err = "\(dir)/stderr.log"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: err, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["serve", "--listen", "127.0.0.1:0", "--db", dbPath] + args
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KILN_") }
        if let isolation { environment["KILN_ISOLATION"] = isolation }
        for (k, v) in env { environment[k] = v }
        if let token { environment["KILN_API_TOKEN"] = token }
        p.environment = environment
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        try p.run()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: out, encoding: .utf8),
               let range = text.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                let port = Int(text[range].split(separator: ":").last!)!
                let s = KilnServer(process: p, port: port, dbPath: dbPath, stdoutPath: out, stderrPath: err)
                s.token = token
                return s
            }
            if !p.isRunning {
                let e = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
                throw TestFailure("kiln exited with \(p.terminationStatus) before listening: \(e)")
            }
            usleep(20_000)
        }
        p.terminate()
        throw TestFailure("kiln did not print its listening line within 20 s")
    }

    init(process: Process, port: Int, dbPath: String, stdoutPath: String, stderrPath: String) {
        self.process = process
        self.port = port
        self.dbPath = dbPath
        self.stdoutPath = stdoutPath
        self.stderrPath = stderrPath
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    public var pid: Int32 { process.processIdentifier }

    /// Sends `signal` and waits for the exit; returns the exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: TimeInterval = 20) -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    public var stdoutText: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderrText: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    // MARK: HTTP through curl

    /// Runs curl against the server; adds the bearer token when one is set and `auth` is true.
    public func request(_ method: String, _ path: String, body: String? = nil, bodyBytes: [UInt8]? = nil,
                        headers: [String: String] = [:], auth: Bool = true, timeout: Double = 60) throws -> HTTPReply {
        var args = ["-sS", "-X", method, "--max-time", String(timeout)]
        for (k, v) in headers { args += ["-H", "\(k): \(v)"] }
        if auth, let token { args += ["-H", "Authorization: Bearer \(token)"] }
        var input: [UInt8]? = nil
        if let body { input = Array(body.utf8) }
        if let bodyBytes { input = bodyBytes }
        if input != nil { args += ["-H", "Content-Type: application/json", "--data-binary", "@-"] }
        return try Curl.run(args, url: baseURL + path, stdin: input)
    }

    public func json(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) throws -> (Int, JSON) {
        let r = try request(method, path, body: body, headers: headers)
        return (r.status, try r.json())
    }

    /// Submits synchronously and returns the terminal record.
    public func run(_ body: String) throws -> JSON {
        let (status, json) = try self.json("POST", "/v1/workloads", body: body)
        guard status == 200 else { throw TestFailure("POST /v1/workloads answered \(status): \(json.text)") }
        return json
    }

    /// Submits asynchronously and returns the id.
    public func submit(_ body: String) throws -> String {
        let (status, json) = try self.json("POST", "/v1/workloads/async", body: body)
        guard status == 202, let id = json["id"]?.stringValue else { throw TestFailure("async submit answered \(status): \(json.text)") }
        return id
    }

    /// Polls until the workload is terminal.
    public func waitTerminal(_ id: String, timeout: TimeInterval = 60) throws -> JSON {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let (_, r) = try json("GET", "/v1/workloads/\(id)")
            if let s = r["status"]?.stringValue, ["completed", "failed", "killed"].contains(s) { return r }
            usleep(20_000)
        }
        throw TestFailure("workload \(id) did not finish within \(timeout) s")
    }

    /// Polls until the workload is running.
    public func waitRunning(_ id: String, timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let (_, r) = try json("GET", "/v1/workloads/\(id)")
            if r["status"]?.stringValue == "running" { return }
            if let s = r["status"]?.stringValue, s != "pending" { throw TestFailure("workload \(id) is \(s), not running: \(r.text)") }
            usleep(10_000)
        }
        throw TestFailure("workload \(id) did not start within \(timeout) s")
    }

    /// Polls `/v1/stats` until the server counts `n` live streams (a busy machine may take
    /// seconds to start a stream's client).
    public func waitForSubscribers(_ n: Int, timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try json("GET", "/v1/stats").1["sse_subscribers"] == .int(Int64(n)) { return }
            usleep(20_000)
        }
        throw TestFailure("the server did not count \(n) streams within \(timeout) s")
    }

    // MARK: /proc readings

    public func openFDs() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    public func threads() -> Int {
        procStatus("Threads")
    }

    public func rssKB() -> Int {
        procStatus("VmRSS")
    }

    private func procStatus(_ key: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? "") ?? -1
        }
        return -1
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A response read by curl.
public struct HTTPReply: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.last { $0.0.lowercased() == name.lowercased() }?.1
    }

    public var text: String { String(decoding: body, as: UTF8.self) }

    public func json() throws -> JSON {
        do { return try JSON.parse(body) } catch { throw TestFailure("not JSON (\(status)): \(text.prefix(500))") }
    }
}

public enum Curl {
    /// Runs `count` curl processes at once from one shell (as a user's script would) and
    /// returns each body.
    public static func parallel(_ count: Int, _ args: [String], url: String) throws -> [[UInt8]] {
        let dir = NSTemporaryDirectory() + "kiln-parallel-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let quoted = (args + [url]).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let script = "for i in $(seq \(count)); do curl -sS \(quoted) -o \(dir)/$i & done; wait"
        let (status, _, err) = try exec("/bin/bash", ["-c", script])
        guard status == 0 else { throw TestFailure("parallel curl failed: \(String(decoding: err, as: UTF8.self))") }
        return try (1...count).map { Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\($0)"))) }
    }

    /// Runs curl with `args` on `url`; headers come from -D, the body from stdout.
    public static func run(_ args: [String], url: String, stdin: [UInt8]? = nil) throws -> HTTPReply {
        let headerFile = NSTemporaryDirectory() + "kiln-curl-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: headerFile) }
        let (status, out, err) = try exec("/usr/bin/curl", args + ["-D", headerFile, url], stdin: stdin)
        guard status == 0 else { throw TestFailure("curl \(args.joined(separator: " ")) \(url) failed (\(status)): \(String(decoding: err, as: UTF8.self))") }
        let raw = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
        // With 100-continue there are several blocks: the last one is the answer.
        let blocks = raw.components(separatedBy: "\r\n\r\n").filter { !$0.isEmpty }
        guard let last = blocks.last else { throw TestFailure("no response headers from \(url)") }
        var lines = last.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst()
        let code = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
        let headers = lines.compactMap { line -> (String, String)? in
            guard let c = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<c]), line[line.index(after: c)...].trimmingCharacters(in: .whitespaces))
        }
        return HTTPReply(status: code, headers: headers, body: out)
    }

    /// Runs a program to completion, returning status, stdout and stderr.
    public static func exec(_ path: String, _ args: [String], stdin: [UInt8]? = nil) throws -> (Int32, [UInt8], [UInt8]) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let outPipe = Pipe()
        let errPipe = Pipe()
        let inPipe = Pipe()
        p.standardOutput = outPipe
        p.standardError = errPipe
        p.standardInput = stdin == nil ? FileHandle.nullDevice : inPipe
        try p.run()
        let box = OutputBox()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            box.setErr(errPipe.fileHandleForReading.readDataToEndOfFile())
            group.leave()
        }
        if let stdin {
            DispatchQueue.global().async {
                inPipe.fileHandleForWriting.write(Data(stdin))
                try? inPipe.fileHandleForWriting.close()
            }
        }
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, Array(out), Array(box.err))
    }
}

private final class OutputBox: @unchecked Sendable {
    // Written once by the reader before `group.leave()`; read after `group.wait()`.
    var err = Data()
    func setErr(_ d: Data) { err = d }
}

/// Runs the raw-socket SSE client (Tests/tools/sseclient.py) and returns its JSON report.
public enum SSEClient {
    public static let script = "\(KilnServer.packageRoot)/Tests/tools/sseclient.py"

    public static func run(_ url: String, _ options: [String] = []) throws -> JSON {
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", script, url] + options)
        guard status == 0 else { throw TestFailure("sseclient failed (\(status)): \(String(decoding: err, as: UTF8.self))") }
        return try JSON.parse(out)
    }

    /// The first connection of a report.
    public static func first(_ url: String, _ options: [String] = []) throws -> JSON {
        guard let c = try run(url, options)["connections"]?.arrayValue?.first else { throw TestFailure("no connection in report") }
        return c
    }

    /// Starts the client in the background; `wait` returns its report.
    public static func start(_ url: String, _ options: [String] = []) throws -> Background {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, url] + options
        let out = NSTemporaryDirectory() + "kiln-sse-\(UUID().uuidString).json"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle.standardError
        try p.run()
        return Background(process: p, output: out)
    }

    public final class Background: @unchecked Sendable {
        let process: Process
        let output: String
        init(process: Process, output: String) {
            self.process = process
            self.output = output
        }

        public func wait() throws -> JSON {
            process.waitUntilExit()
            let data = try Data(contentsOf: URL(fileURLWithPath: output))
            return try JSON.parse(Array(data))
        }
    }
}

extension JSON {
    /// The `data` fields of each event, joined by newlines, as a browser would show them.
    public var eventLines: [String] {
        (self["events"]?.arrayValue ?? []).map { ($0["data"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: "\n") }
    }

    public var eventIDs: [Int64] {
        (self["events"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue.flatMap { Int64($0) } }
    }
}
