import Foundation
import KilnAPI
import KilnCore
import KilnLogs
import KilnEngine
import KilnStore
import KilnHTTP
import Logging

/// The fuzz target over Kiln's request decoding and routing (reliability check R3):
/// `kiln-fuzz` calls `check` from libFuzzer (`make fuzz`), and a unit test replays the
/// committed corpus (Tests/fuzz-corpus) through it.
///
/// An input's first byte chooses the mode and the server configuration:
/// - bits 0-1: the API: no token and no CORS; token `fuzz-token` and CORS for
///   `http://a.example`; CORS `*`; token only. Bit 3 set instead picks a fifth: the
///   token and a tokens file with read and submit tokens of tenants team-a and team-b
///   (`scopedTokens`); a read token must never succeed at an action, and no token may
///   see another tenant's record.
/// - bit 2 clear: the rest is JSON text: it must parse and re-encode stably, and it is
///   also submitted as a `POST /v1/workloads` body.
/// - bit 2 set: the rest is a request: `METHOD TARGET` on the first line, `Name: value`
///   header lines, an empty line, then the body (lines end with LF). It is decoded the
///   way libmicrohttpd and Kiln decode a request (the target through `RequestTarget`, a
///   NUL ending it, header names lowercased, repeated headers joined) and answered by
///   `RequestFraming` and `KilnAPI.respond(to:)`; a refused target gets `badRequest`.
///
/// Invariants: no crash; every answer is 2xx or 4xx; a 4xx has a JSON error body with a
/// code and a message; 405 names the allowed methods (not the one used), 401 asks for a
/// bearer token; a JSON answer is valid JSON; a log stream is well-formed SSE; the access
/// log line is JSON, and once fully percent-decoded it mentions `access_token` only as
/// `access_token=REDACTED` and never holds the token's value; a JSON value that parses re-encodes to text that parses to the same value
/// and encodes to the same bytes.
///
/// No workload can run: the engine has no backends, so every valid submission is refused
/// (422, isolation unavailable) before anything is stored or started. The store holds a
/// few fixed workloads (`FuzzHarness.seeded`) so that ids in the corpus reach real records.
public final class FuzzHarness: @unchecked Sendable {
    public static let shared = FuzzHarness()

    /// Fixed workloads: completed with lines, running with a live log, pending, failed.
    public static let seeded = [
        "01JKQX7V8MZRN3B4HTGFWDCS9A", "01JKQX7V8MZRN3B4HTGFWDCS9B",
        "01JKQX7V8MZRN3B4HTGFWDCS9C", "01JKQX7V8MZRN3B4HTGFWDCS9D",
    ]
    public static let token = "fuzz-token"
    /// Tokens of the fifth configuration's tokens file: (value, tenant, role).
    public static let scopedTokens: [(value: String, tenant: String, role: String)] = [
        ("fuzz-read-a", "team-a", "read"), ("fuzz-submit-a", "team-a", "submit"), ("fuzz-read-b", "team-b", "read"),
    ]
    /// A workload of tenant team-a (the others belong to `default`).
    public static let teamAWorkload = "01JKQX7V8MZRN3B4HTGFWDCS9F"

    let engine: Engine
    let apis: [KilnAPI]
    /// The last access log line any of the APIs wrote.
    private let accessLine = LineBox()
    /// What the last request was and how it was answered (`kiln-fuzz -v`).
    public private(set) var lastAnswer = ""

    public init() {
        let store = try! SQLiteStore(path: ":memory:")
        let broker = LogBroker.backed(by: store)
        let quiet = Logger(label: "kiln-fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        engine = Engine(store: store, broker: broker, backends: [],
                        config: EngineConfig(maxConcurrent: 1, queueLimit: 1,
                                             workRoot: NSTemporaryDirectory() + "kiln-fuzz-\(getpid())"),
                        logger: quiet)
        FuzzHarness.seed(store: store, broker: broker)
        let envs: [[String: String]] = [
            ["KILN_DB": ":memory:"],
            ["KILN_DB": ":memory:", "KILN_API_TOKEN": FuzzHarness.token, "KILN_CORS_ORIGINS": "http://a.example"],
            ["KILN_DB": ":memory:", "KILN_CORS_ORIGINS": "*"],
            ["KILN_DB": ":memory:", "KILN_API_TOKEN": FuzzHarness.token],
            ["KILN_DB": ":memory:", "KILN_API_TOKEN": FuzzHarness.token, "KILN_TOKENS_FILE": FuzzHarness.writeTokensFile()],
        ]
        var apis: [KilnAPI] = []
        let box = accessLine
        for env in envs {
            let config = try! ServerConfig.resolve(flags: [:], environment: env)
            apis.append(KilnAPI(config: config, engine: engine, logger: quiet, version: "fuzz",
                                metricsText: { Array("kiln_up 1\n".utf8) }, accessLog: { box.set($0) }))
        }
        self.apis = apis
    }

    /// The tokens file of the fifth configuration, by digest as the server expects it.
    static func writeTokensFile() -> String {
        let entries = scopedTokens.enumerated().map { i, t in
            "{\"name\": \"t\(i)\", \"tenant\": \"\(t.tenant)\", \"role\": \"\(t.role)\", \"sha256\": \"\(TokenSet.hexDigest(t.value))\"}"
        }
        let path = NSTemporaryDirectory() + "kiln-fuzz-tokens-\(getpid()).json"
        try! Data("{\"tokens\": [\(entries.joined(separator: ", "))]}".utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func seed(store: any WorkloadStore, broker: LogBroker) {
        let r = Resources(cpus: 1, memMB: 256, timeoutS: 30)
        let t: Int64 = 1_780_000_000_000
        func lines(_ n: Int) -> [LogLine] {
            (1...n).map { LogLine(seq: Int64($0), stream: $0 % 2 == 0 ? .stderr : .stdout, ts: t + Int64($0), line: "line \($0)\r\u{1}é") }
        }
        try! store.insert(WorkloadRecord(id: seeded[0], status: .completed, runtime: .shell, isolation: .auto,
                                         isolationUsed: .process, exitCode: 0, outputJSON: #"{"sum":3}"#, resources: r,
                                         logLines: 3, durationMs: 5, createdAt: t, startedAt: t + 1, finishedAt: t + 6))
        try! store.appendLines(seeded[0], lines(3))
        try! store.insert(WorkloadRecord(id: seeded[1], status: .running, runtime: .python, isolation: .process,
                                         isolationUsed: .process, resources: r, createdAt: t + 10, startedAt: t + 11))
        broker.open(seeded[1])
        broker.publish(seeded[1], lines(2))
        try! store.insert(WorkloadRecord(id: seeded[2], status: .pending, runtime: .node, isolation: .isolate,
                                         resources: r, createdAt: t + 20))
        try! store.insert(WorkloadRecord(id: seeded[3], status: .failed, runtime: .shell, isolation: .sandbox,
                                         isolationUsed: .sandbox, exitCode: 7, outputJSON: #""oops\n""#, error: "exited with code 7",
                                         resources: r, logLines: 1, durationMs: 2, createdAt: t + 30, startedAt: t + 31, finishedAt: t + 33))
        try! store.appendLines(seeded[3], lines(1))
        try! store.insert(WorkloadRecord(id: teamAWorkload, status: .completed, runtime: .shell, isolation: .auto,
                                         isolationUsed: .sandbox, exitCode: 0, resources: r, logLines: 2, durationMs: 3,
                                         createdAt: t + 40, startedAt: t + 41, finishedAt: t + 44, tenant: "team-a"))
        try! store.appendLines(teamAWorkload, lines(2))
    }

    /// Runs one input; returns the first invariant it breaks, or nil.
    public func check(_ input: [UInt8]) -> String? {
        guard let flags = input.first else { return nil }
        // Bits 0-1 pick the configuration; bit 3 picks the one with a tokens file.
        let api = flags & 8 != 0 ? apis[4] : apis[Int(flags & 3)]
        let rest = Array(input.dropFirst())
        if flags & 4 == 0 {
            if let problem = FuzzHarness.checkJSON(rest) { return problem }
            let request = HTTPRequest(method: "POST", path: "/v1/workloads", headers: ["authorization": "Bearer \(FuzzHarness.token)"], body: rest)
            return checkAnswer(api, request, framing: nil)
        }
        let (request, lines, targetProblem) = FuzzHarness.decodeRequest(rest)
        return checkAnswer(api, request, framing: targetProblem ?? RequestFraming.problem(version: "HTTP/1.1", headers: lines))
    }

    // MARK: JSON

    /// A value that parses re-encodes to text that parses to the same value, and encoding
    /// is stable from there.
    static func checkJSON(_ bytes: [UInt8]) -> String? {
        guard let value = try? JSON.parse(bytes) else { return nil }
        let text = value.encoded()
        guard String(validating: text, as: UTF8.self) != nil else { return "encoded JSON is not UTF-8" }
        let again: JSON
        do { again = try JSON.parse(text) } catch { return "re-encoded JSON does not parse (\(error)): \(shown(text))" }
        guard again == value else { return "re-encoded JSON parses to another value: \(shown(text))" }
        guard again.encoded() == text else { return "encoding is not stable: \(shown(text)) then \(shown(again.encoded()))" }
        return nil
    }

    // MARK: Requests

    /// Decodes `METHOD TARGET\nName: value\n...\n\nbody` the way the daemon would hand it over.
    static func decodeRequest(_ bytes: [UInt8]) -> (HTTPRequest, [(name: String, value: String)], targetProblem: String?) {
        let lf = UInt8(ascii: "\n")
        var headEnd = bytes.count
        var bodyStart = bytes.count
        for i in 0..<bytes.count where bytes[i] == lf && i + 1 < bytes.count && bytes[i + 1] == lf {
            headEnd = i
            bodyStart = i + 2
            break
        }
        let head = bytes[0..<headEnd].split(separator: lf, omittingEmptySubsequences: false)
        let first = head.first ?? []
        let space = first.firstIndex(of: UInt8(ascii: " "))
        let method = cString(space.map { first[first.startIndex..<$0] } ?? first[...])
        // The daemon hands over the target as a C string, and parses it with RequestTarget.
        let raw: [UInt8] = space.map { Array(first[($0 + 1)...].prefix { $0 != 0 }) } ?? []
        let parsed = RequestTarget.parse(raw, method: method)
        var headers: [String: String] = [:]
        var lines: [(name: String, value: String)] = []
        for line in head.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = cString(line[line.startIndex..<colon])
            var v = line[(colon + 1)...]
            while let c = v.first, c == 0x20 || c == 0x09 { v = v.dropFirst() }
            let value = cString(v)
            lines.append((name, value))
            let key = name.lowercased()
            headers[key] = headers[key].map { $0 + ", " + value } ?? value
        }
        let body = bodyStart < bytes.count ? Array(bytes[bodyStart...]) : []
        let request = HTTPRequest(method: method, target: (try? parsed.get()) ?? .invalid, headers: headers, body: body, requestID: "fuzz")
        var targetProblem: String? = nil
        if case .failure(let why) = parsed { targetProblem = why.description }
        return (request, lines, targetProblem)
    }

    /// What `String(cString:)` makes of bytes: up to the first NUL, invalid UTF-8 repaired.
    static func cString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let upToNul = bytes.prefix { $0 != 0 }
        return String(decoding: Array(upToNul), as: UTF8.self)
    }

    func checkAnswer(_ api: KilnAPI, _ request: HTTPRequest, framing: String?) -> String? {
        var response: HTTPResponse
        if let framing {
            // The daemon refuses it before routing and asks the API for the answer.
            var refused = request
            refused.refusal = .badRequest(framing)
            guard case .now(let r) = api.respond(to: refused) else { return "a refusal was not answered at once" }
            response = r
            guard response.status == 400 else { return "a framing problem answered \(response.status)" }
        } else {
            switch api.respond(to: request) {
            case .now(let r):
                response = r
            case .later(let promise):
                // No workload can run, so nothing should be deferred; if it is, it must come.
                let box = ResponseBox()
                let done = DispatchSemaphore(value: 0)
                promise.onResolve { r in box.set(r); done.signal() }
                guard done.wait(timeout: .now() + 5) == .success, let r = box.value else {
                    return "\(request.method) \(FuzzHarness.shown(request.path)): a deferred answer never came"
                }
                response = r
            }
        }
        let what = "\(request.method) \(FuzzHarness.shown(request.path)) -> \(response.status)"
        lastAnswer = what
        guard (200..<300).contains(response.status) || (400..<500).contains(response.status) else {
            return "\(what): status outside 2xx and 4xx"
        }
        switch response.body {
        case .bytes(let body):
            if response.status >= 400 {
                guard response.header("Content-Type") == "application/json" else { return "\(what): error without JSON content type" }
                guard let doc = try? JSON.parse(body), let err = doc["error"],
                      err["code"]?.stringValue?.isEmpty == false, err["message"]?.stringValue != nil else {
                    return "\(what): not a JSON error body: \(FuzzHarness.shown(body))"
                }
            } else if response.header("Content-Type") == "application/json" {
                guard (try? JSON.parse(body)) != nil else { return "\(what): invalid JSON body: \(FuzzHarness.shown(body))" }
            }
        case .stream(let source):
            if let problem = FuzzHarness.checkStream(source, response) { return "\(what): \(problem)" }
        }
        if response.status == 405 {
            guard let allow = response.header("Allow"), !allow.isEmpty else { return "\(what): 405 without Allow" }
            if allow.components(separatedBy: ", ").contains(request.method) { return "\(what): Allow \(allow) names the method" }
        }
        if response.status == 401, response.header("WWW-Authenticate") == nil { return "\(what): 401 without WWW-Authenticate" }
        if let problem = FuzzHarness.checkScope(api, request, response) { return "\(what): \(problem)" }
        return checkAccessLog(api, request, status: response.status)
    }

    /// With a scoped token, a read token never gets a 2xx for an action, and no answer shows
    /// a record of another tenant.
    static func checkScope(_ api: KilnAPI, _ request: HTTPRequest, _ response: HTTPResponse) -> String? {
        guard api.config.tokensFile != nil, let auth = request.header("authorization") else { return nil }
        let presented = auth.split(separator: " ", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) }
        guard let caller = scopedTokens.first(where: { $0.value == presented }) else { return nil }
        let ok = (200..<300).contains(response.status)
        if ok, caller.role == "read", request.method == "POST" || request.method == "DELETE" {
            return "a read token's \(request.method) succeeded"
        }
        guard ok, case .bytes(let body) = response.body, let doc = try? JSON.parse(body) else { return nil }
        var records: [JSON] = []
        if doc["tenant"] != nil { records.append(doc) }
        records += doc["workloads"]?.arrayValue ?? []
        for r in records where r["tenant"]?.stringValue != caller.tenant {
            return "a \(caller.tenant) token saw a record of tenant \(r["tenant"]?.text ?? "none")"
        }
        if request.target.segments.count >= 3, request.target.segments[2] == teamAWorkload, caller.tenant != "team-a" {
            return "a \(caller.tenant) token reached a team-a workload"
        }
        return nil
    }

    /// Reads a log stream until it waits or ends: SSE lines only, UTF-8, then closes it.
    static func checkStream(_ source: any HTTPStreamSource, _ response: HTTPResponse) -> String? {
        defer { source.close() }
        guard response.status == 200, response.header("Content-Type") == "text/event-stream" else {
            return "a stream answer that is not a 200 event stream"
        }
        source.attach(waker: {})
        var bytes: [UInt8] = []
        reads: for _ in 0..<16 {
            switch source.read(max: 64 * 1024) {
            case .bytes(let b):
                if b.isEmpty { return "an empty read" }
                bytes += b
            case .wait, .end:
                break reads
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { return "stream bytes are not UTF-8" }
        if text.contains("\r") { return "a carriage return in the stream" }
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if !(line.hasPrefix("id: ") || line.hasPrefix("data: ") || line.hasPrefix("event: ") || line.hasPrefix(":")) {
                return "a stream line that is not an SSE field: \(shown(Array(line.utf8)))"
            }
        }
        return nil
    }

    /// The access log line is JSON and never carries an access token.
    func checkAccessLog(_ api: KilnAPI, _ request: HTTPRequest, status: Int) -> String? {
        accessLine.set(nil)
        api.completed(request, status: status, route: nil, durationNanos: 1_234_567)
        guard let line = accessLine.value, let doc = try? JSON.parse(line) else { return "access log line is not JSON" }
        guard let logged = doc["path"]?.stringValue else { return "access log line without a path" }
        // Decoded until it no longer changes, every mention of the token is a redacted one.
        let lowered = String(decoding: PercentDecoding.decodeUntilStable(logged.utf8), as: UTF8.self).lowercased()
        var rest = lowered[...]
        while let r = rest.range(of: "access_token") {
            guard lowered[r.upperBound...].hasPrefix("=redacted") else {
                return "access log path \(FuzzHarness.shown(logged)) mentions access_token without REDACTED"
            }
            rest = lowered[r.upperBound...]
        }
        // The token's value is nowhere in the line, plain or encoded, when it is distinctive
        // enough to look for (not a part of the rest of the request).
        for item in request.target.query where item.name.lowercased() == "access_token" && item.value.utf8.count >= 6 {
            let elsewhere = request.path.contains(item.value)
                || request.target.query.contains { $0 != item && ($0.name.contains(item.value) || $0.value.contains(item.value)) }
            if !elsewhere, lowered.contains(item.value.lowercased()) {
                return "access log path \(FuzzHarness.shown(logged)) holds the access token"
            }
        }
        return nil
    }

    static func shown(_ bytes: [UInt8]) -> String {
        let s = String(decoding: bytes.prefix(200), as: UTF8.self)
        return "\"\(s.replacingOccurrences(of: "\n", with: "\\n"))\"" + (bytes.count > 200 ? "…" : "")
    }

    static func shown(_ s: String) -> String { shown(Array(s.utf8)) }
}

private final class ResponseBox: Sendable {
    private let response = Locked<HTTPResponse?>(nil)
    func set(_ r: HTTPResponse) { response.withLock { $0 = r } }
    var value: HTTPResponse? { response.withLock { $0 } }
}

private final class LineBox: Sendable {
    private let line = Locked<String?>(nil)
    func set(_ l: String?) { line.withLock { $0 = l } }
    var value: String? { line.withLock { $0 } }
}
