import Foundation
import KilnAPI
import KilnBackends
import KilnCore
import KilnEngine
import KilnHTTP
import KilnLogs
import KilnStore
import KilnTestSupport
import Logging
import Synchronization

/// The whole API in this process, without a socket: a real SQLite file, a real engine with
/// the process backend, and `KilnAPI.respond(to:)` called as the daemon calls it (the
/// target parsed by `RequestTarget`, deferred answers awaited, streams read to their end).
/// API semantics are tested here; what needs sockets, processes and signals keeps the
/// live binary.
final class InProcessKiln: Sendable {
    struct Reply {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
        func header(_ name: String) -> String? { headers.last { $0.0.lowercased() == name.lowercased() }?.1 }
        var text: String { String(decoding: body, as: UTF8.self) }
        func json() throws -> JSON { try JSON.parse(body) }
    }

    let api: KilnAPI
    let engine: Engine

    init(env: [String: String] = [:]) throws {
        let dir = KilnServer.tempDir("kiln-inprocess")
        var environment = ["KILN_DB": "\(dir)/kiln.db", "KILN_ISOLATION": "process"]
        for (k, v) in env { environment[k] = v }
        let config = try ServerConfig.resolve(flags: [:], environment: environment)
        let store = try SQLiteStore(path: config.db)
        let broker = LogBroker.backed(by: store)
        let quiet = Logger(label: "in-process", factory: { _ in SwiftLogNoOpLogHandler() })
        engine = Engine(store: store, broker: broker, backends: [ProcessBackend(workRoot: "\(dir)/work")],
                        config: EngineConfig(maxConcurrent: 4, queueLimit: 100, workRoot: "\(dir)/work",
                                             allowedIsolation: config.isolation),
                        logger: quiet)
        api = KilnAPI(config: config, engine: engine, logger: quiet, version: "test", metricsText: { [] }, accessLog: { _ in })
    }

    deinit { engine.shutdown(timeout: 2) }

    func request(_ method: String, _ target: String, body: [UInt8] = [], headers: [String: String] = [:]) throws -> Reply {
        var request: HTTPRequest
        switch RequestTarget.parse(Array(target.utf8), method: method) {
        case .success(let t):
            request = HTTPRequest(method: method, target: t, headers: Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value) }),
                                  body: body)
        case .failure(let why):
            request = HTTPRequest(method: method, target: .invalid, body: body)
            request.refusal = .badRequest(why.description)
        }
        let response: HTTPResponse
        switch api.respond(to: request) {
        case .now(let r):
            response = r
        case .later(let promise):
            let box = Mutex<HTTPResponse?>(nil)
            let done = DispatchSemaphore(value: 0)
            promise.onResolve { r in box.withLock { $0 = r }; done.signal() }
            guard done.wait(timeout: .now() + 60) == .success, let r = box.withLock({ $0 }) else {
                throw TestFailure("\(method) \(target): no answer within 60 s")
            }
            response = r
        }
        switch response.body {
        case .bytes(let b):
            return Reply(status: response.status, headers: response.headers, body: b)
        case .stream(let source):
            return Reply(status: response.status, headers: response.headers, body: try InProcessKiln.drain(source))
        }
    }

    func request(_ method: String, _ target: String, body: String, headers: [String: String] = [:]) throws -> Reply {
        try request(method, target, body: Array(body.utf8), headers: headers)
    }

    func json(_ method: String, _ target: String, body: String? = nil) throws -> (Int, JSON) {
        let r = try request(method, target, body: Array((body ?? "").utf8))
        return (r.status, try r.json())
    }

    /// Submits synchronously; the terminal record.
    func run(_ body: String) throws -> JSON {
        let (status, json) = try self.json("POST", "/v1/workloads", body: body)
        guard status == 200 else { throw TestFailure("POST /v1/workloads answered \(status): \(json.text)") }
        return json
    }

    /// Reads a stream to its end, waiting on its waker while it has nothing (60 s at most).
    static func drain(_ source: any HTTPStreamSource) throws -> [UInt8] {
        let woken = DispatchSemaphore(value: 0)
        source.attach(waker: { woken.signal() })
        defer { source.close() }
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            switch source.read(max: 64 * 1024) {
            case .bytes(let b): out += b
            case .end: return out
            case .wait: _ = woken.wait(timeout: .now() + 1)
            }
        }
        throw TestFailure("the stream did not end within 60 s")
    }
}
