import Foundation
import KilnCore
import KilnLogs
import KilnEngine
import KilnStore
import KilnHTTP
import Logging
import Metrics
import Synchronization

/// The HTTP API of Kiln: the route table, the middleware chain (CORS, errors, auth), the
/// workload endpoints and the access log.
///
/// `@unchecked Sendable`: `router` and `chain` are written once, in `init` (their closures
/// need `self`), before the daemon can call in; every other field is a `let` of a
/// `Sendable` type.
public final class KilnAPI: HTTPResponder, @unchecked Sendable {
    public let config: ServerConfig
    let engine: Engine
    let store: any WorkloadStore
    let logger: Logger
    let version: String
    let startedAt = Date()
    let metricsText: @Sendable () -> [UInt8]
    let accessLog: @Sendable (String) -> Void
    private(set) var router = Router()
    // Built once in init, read-only after.
    private var chain: Responder = { _, _ in .now(HTTPResponse(status: 503)) }
    let subscribers = SubscriberCount()
    let heartbeats: HeartbeatHub
    private let shuttingDownFlag = Atomic<Bool>(false)
    /// Store reads and writes of requests (GRDB's pool serves several readers at once), on
    /// a fixed set of threads: a concurrent Dispatch queue grew to dozens of blocked threads
    /// when 10,000 streams opened at once (issue 11, B1/B2).
    private let storeQueue = StoreWorkers(count: max(2, ProcessInfo.processInfo.activeProcessorCount * 2))
    private let errors: ErrorMiddleware

    public init(config: ServerConfig, engine: Engine, logger: Logger, version: String,
                metricsText: @escaping @Sendable () -> [UInt8], accessLog: @escaping @Sendable (String) -> Void) {
        self.config = config
        self.engine = engine
        self.store = engine.store
        self.logger = logger
        self.version = version
        self.metricsText = metricsText
        self.accessLog = accessLog
        self.heartbeats = HeartbeatHub(intervalSeconds: config.heartbeatS)
        let isolation = config.isolation
        self.errors = ErrorMiddleware(processIsOffButAvailable: { [engine] in
            !isolation.contains(.process) && engine.capability(.process)?.available == true
        })
        router = makeRouter()
        chain = makeChain()
    }

    public var routeTable: [(method: String, template: String)] { router.table }
    /// The most text one history page carries (at least one line).
    static let historyBudget = 4 << 20

    /// From now on new submissions get 503.
    public func beginShutdown() { shuttingDownFlag.store(true, ordering: .releasing) }
    /// The SSE frame of a text stream's line: the broker encodes each line once with it.
    public static func textFrame(_ line: LogLine) -> [UInt8] { LogStreamSource.textFrame(line) }
    /// Waits until every answer already on its way through the store queue is resolved (a
    /// synchronous run that the shutdown just ended must get its record, not a 503).
    public func finishPendingAnswers() {
        storeQueue.drain()
    }
    /// Log streams still open (shutdown waits for them to write their end).
    public var openStreams: Int { subscribers.value }
    var isShuttingDown: Bool { shuttingDownFlag.load(ordering: .acquiring) }

    /// Every route says who may call it; `AuthMiddleware` checks that before any handler runs.
    private func makeRouter() -> Router {
        var r = Router()
        r.add("GET", "/healthz", .open) { [unowned self] req, _ in .now(healthz(req)) }
        r.add("GET", "/readyz", .open) { [unowned self] _, _ in .now(readyz()) }
        r.add("GET", "/metrics", .open) { [unowned self] _, _ in
            .now(HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: .bytes(metricsText())))
        }
        // Everything that reads or writes the store runs on `storeQueue` (`onStore`), never on
        // a daemon thread: the connection waits suspended, as a synchronous submission does.
        r.add("POST", "/v1/workloads", .submit, onStore { [unowned self] req, c in try submit(req, c.caller, sync: true) })
        r.add("GET", "/v1/workloads", .read, onStore { [unowned self] req, c in .now(try list(req, c.caller)) })
        r.add("POST", "/v1/workloads/async", .submit, onStore { [unowned self] req, c in try submit(req, c.caller, sync: false) })
        r.add("GET", "/v1/workloads/{id}", .read, onStore { [unowned self] _, c in .now(try get(c.parameters["id"]!, c.caller)) })
        r.add("DELETE", "/v1/workloads/{id}", .kill, onStore { [unowned self] req, c in try kill(c.parameters["id"]!, req, c.caller) })
        r.add("GET", "/v1/workloads/{id}/logs", .readStream, onStore { [unowned self] req, c in
            .now(try streamLogs(req, id: c.parameters["id"]!, caller: c.caller))
        })
        r.add("GET", "/v1/workloads/{id}/logs/history", .read, onStore { [unowned self] req, c in
            .now(try history(req, id: c.parameters["id"]!, caller: c.caller))
        })
        // Listing backends probes those not probed yet (a real workload each): not on the daemon's threads.
        r.add("GET", "/v1/backends", .read, onStore { [unowned self] _, c in .now(backends(c.caller)) })
        r.add("GET", "/v1/stats", .read, onStore { [unowned self] _, c in .now(try stats(c.caller)) })
        r.add("GET", "/v1/nodes", .admin, onStore { [unowned self] _, _ in .now(try nodes()) })
        return r
    }

    /// A handler that runs on the store queue: the answer (or its error, rendered as the
    /// chain renders errors) resolves the connection's promise.
    private func onStore(_ handler: @escaping RouteHandler) -> RouteHandler {
        { [storeQueue, errors] request, context in
            let promise = HTTPPromise()
            storeQueue.async {
                do {
                    switch try handler(request, context) {
                    case .now(let response): promise.resolve(response)
                    case .later(let inner): inner.onResolve { promise.resolve($0) }
                    }
                } catch {
                    promise.resolve(errors.render(error, context))
                }
            }
            return .later(promise)
        }
    }

    /// The middleware chain, outermost first, around `route`.
    private func makeChain() -> Responder {
        let middleware: [any Middleware] = [
            CORSMiddleware(origins: config.corsOrigins),
            errors,
            AuthMiddleware(tokens: config.tokens),
        ]
        return middleware.chain { [unowned self] request, context in try route(request, context) }
    }

    // MARK: HTTPResponder

    /// The route is matched here, once; the chain and the access log read it from the context.
    public func respond(to request: HTTPRequest) -> HTTPResult {
        let match = request.refusal == nil ? router.match(method: request.method, target: request.target) : .notFound
        var route: Router.Route? = nil
        var parameters = Parameters()
        if case .found(let r, let p) = match {
            route = r
            parameters = p
        }
        var requestLogger = logger
        requestLogger[metadataKey: "request_id"] = "\(request.requestID)"
        let context = RequestContext(requestID: request.requestID, logger: requestLogger, route: route, match: match,
                                     parameters: parameters)
        do {
            return try chain(request, context)
        } catch {
            // ErrorMiddleware renders everything thrown past it; nothing should come here.
            return .now(APIError(500, "internal", "internal error: \(error)").response)
        }
    }

    /// The innermost step: refusals, the target's form, then the matched route's handler.
    private func route(_ request: HTTPRequest, _ context: RequestContext) throws -> HTTPResult {
        if let refusal = request.refusal { throw APIError(refusal) }
        switch request.target.form {
        case .origin, .absolute:
            break
        case .asterisk:
            // `OPTIONS *` asks about the server as a whole (RFC 9110 section 9.3.7).
            return .now(HTTPResponse(status: 204, headers: [("Allow", "GET, HEAD, POST, DELETE, OPTIONS")]))
        case .invalid:
            throw APIError(400, "bad_request", "the request target is not valid")
        }
        switch context.match {
        case .found(let route, _):
            return try route.handler(request, context)
        case .methodNotAllowed(let allowed, _):
            let allow = (allowed + (allowed.contains("GET") ? ["HEAD"] : [])).joined(separator: ", ")
            throw APIError(405, "method_not_allowed", "\(request.method) is not allowed on \(request.path); allowed: \(allow)",
                           headers: [("Allow", allow)])
        case .notFound:
            throw APIError(404, "not_found", "no route for \(request.path)")
        }
    }

    public func completed(_ request: HTTPRequest, status: Int, route: String?, durationNanos: UInt64) {
        let ms = Double(durationNanos) / 1_000_000
        let template = route ?? "unmatched"
        let line = JSON.object([
            ("time", .string(Millis.rfc3339(Millis.now()))),
            ("request_id", .string(request.requestID)),
            ("method", .string(request.method)),
            ("path", .string(AccessLogLine.target(request.target))),
            ("status", .int(Int64(status))),
            ("duration_ms", .double((ms * 1000).rounded() / 1000)),
        ]).text
        accessLog(line)
        let method = ["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"].contains(request.method) ? request.method : "other"
        Metrics.Counter(label: "kiln_http_requests_total", dimensions: [("method", method), ("route", template), ("status", String(status))]).increment()
        Metrics.Timer(label: "kiln_http_request_duration_seconds", dimensions: [("route", template)]).recordNanoseconds(Int64(durationNanos))
    }

    // MARK: Endpoints

    private func healthz(_ req: HTTPRequest) -> HTTPResponse {
        .json(200, .object([("status", .string("ok")), ("version", .string(version)),
                            ("uptime_s", .int(Int64(Date().timeIntervalSince(startedAt))))]))
    }

    /// 200 while submissions are accepted; 503 while stopping or while the store refuses writes.
    private func readyz() -> HTTPResponse {
        var reason: String? = nil
        if isShuttingDown {
            reason = "the server is shutting down"
        } else if let failure = engine.health.failure {
            reason = "the store refuses writes: \(failure)"
        }
        guard let reason else { return .json(200, .object([("status", .string("ready"))])) }
        return .json(503, .object([("status", .string("not_ready")), ("reason", .string(reason))]))
    }

    private func submit(_ req: HTTPRequest, _ caller: Caller, sync: Bool) throws -> HTTPResult {
        if isShuttingDown { throw APIError(503, "shutting_down", "the server is shutting down") }
        var submission = try SubmissionParser(config).parse(req.body)
        submission.tenant = caller.tenant
        submission.isolationLimit = caller.isolation
        let promise = sync ? HTTPPromise() : nil
        var onFinish: Engine.Completion? = nil
        // The answer (up to 1 MiB of output) is encoded on the store queue, not on the
        // engine's writer that reports the end.
        if let promise { onFinish = { [storeQueue] record in storeQueue.async { promise.resolve(.json(200, record.json)) } } }
        let record = try engine.submit(submission, onFinish: onFinish)
        if let promise { return .later(promise) }
        return .now(.json(202, .object([("id", .string(record.id)), ("status", .string(record.status.rawValue))]),
                          headers: [("Location", "/v1/workloads/\(record.id)")]))
    }

    /// The record, if the caller may see it; another tenant's workload is 404, exactly as
    /// an unknown id, so that ids cannot be probed across tenants.
    func visibleRecord(_ id: String, _ caller: Caller) throws -> WorkloadRecord {
        guard let r = try store.get(id), caller.sees(tenant: r.tenant) else {
            throw APIError(404, "not_found", "workload \(id) not found")
        }
        return r
    }

    private func get(_ id: String, _ caller: Caller) throws -> HTTPResponse {
        var r = try visibleRecord(id, caller)
        // Its end is waiting for the store to accept writes: answer the end, as its waiters got.
        if !r.status.isTerminal, let end = engine.heldEnd(id) { return .json(200, end.json) }
        // While it runs, the line count is the live log's.
        if !r.status.isTerminal, let live = engine.broker.log(id) { r.logLines = live.lastSeq }
        return .json(200, r.json)
    }

    private func kill(_ id: String, _ req: HTTPRequest, _ caller: Caller) throws -> HTTPResult {
        _ = try visibleRecord(id, caller)
        if try Query.flag(req, "purge") { return try purge(id) }
        let promise = HTTPPromise()
        try engine.kill(id) { [storeQueue] r in
            storeQueue.async {
                // It may have ended on its own while the kill was on its way.
                if r.status == .killed {
                    promise.resolve(.json(200, r.json))
                } else {
                    promise.resolve(APIError(409, "conflict", "workload \(r.id) is already \(r.status.rawValue)").response)
                }
            }
        }
        return .later(promise)
    }

    /// `DELETE …?purge=true`: 204 once the record and its log are gone (a running workload
    /// is killed first); afterwards the id is 404.
    private func purge(_ id: String) throws -> HTTPResult {
        let promise = HTTPPromise()
        try engine.purge(id) { [storeQueue] result in
            storeQueue.async {
                switch result {
                case .success: promise.resolve(HTTPResponse(status: 204))
                case .failure(let error): promise.resolve(APIError(error, processIsOffButAvailable: false).response)
                }
            }
        }
        return .later(promise)
    }

    private func list(_ req: HTTPRequest, _ caller: Caller) throws -> HTTPResponse {
        let limit = try Query.int(req, "limit", default: 50, range: 1...500)
        let status = try Query.enumValue(req, "status", WorkloadStatus.self)
        let isolation = try Query.enumValue(req, "isolation", Isolation.self)
        let runtime = try Query.enumValue(req, "runtime", Runtime.self)
        let cursor = req.query["cursor"]
        if let cursor, !ULIDGenerator.isValid(cursor) { throw APIError.invalid("cursor", "cursor is not a workload id") }
        var tenant = caller.scope
        if let asked = req.query["tenant"] {
            guard Tenant.isValid(asked) else { throw APIError.invalid("tenant", "tenant must be 1 to 63 of a-z, 0-9, '.', '_' and '-'") }
            guard caller.role == .admin || asked == caller.tenant else {
                throw APIError(403, "forbidden", "only an admin token may list another tenant's workloads")
            }
            tenant = asked
        }
        // The filter is the backend used, which is never `auto`: nothing matches (SPEC §3).
        let page = isolation == .auto ? (records: [], nextCursor: nil)
            : try store.list(limit: limit, cursor: cursor,
                             filter: WorkloadFilter(status: status, isolationUsed: isolation, runtime: runtime, tenant: tenant))
        return .json(200, .object([("workloads", .array(page.records.map(\.json))),
                                   ("next_cursor", page.nextCursor.map { .string($0) } ?? .null)]))
    }

    private func history(_ req: HTTPRequest, id: String, caller: Caller) throws -> HTTPResponse {
        let after = try Query.int(req, "after", default: 0, range: 0...Int.max)
        let limit = try Query.int(req, "limit", default: 1000, range: 1...10_000)
        let r = try visibleRecord(id, caller)
        // Read in small pages and stop past a few MiB: `next_after` lets the client go on.
        var lines: [LogLine] = []
        var bytes = 0
        var from = Int64(after)
        pages: while lines.count < limit {
            let want = min(256, limit - lines.count)
            let page = try store.lines(id, after: from, limit: want)
            for l in page {
                if !lines.isEmpty && bytes >= KilnAPI.historyBudget { break pages }
                lines.append(l)
                bytes += l.line.utf8.count + 64
            }
            guard page.count == want, let last = page.last else { break }
            from = last.seq
        }
        let lastReturned = lines.last?.seq ?? Int64(after)
        let complete = r.status.isTerminal && lastReturned >= r.logLines
        return .json(200, .object([
            ("lines", .array(lines.map(\.json))),
            ("next_after", complete ? .null : .int(lastReturned)),
            ("complete", .bool(complete)),
        ]))
    }

    /// Each backend with `allowed`: whether this caller's workloads may use it.
    private func backends(_ caller: Caller) -> HTTPResponse {
        let allowed = engine.allowedIsolation(limit: caller.isolation)
        let list = engine.capabilities.map { cap -> JSON in
            guard case .object(var members) = cap.json else { return cap.json }
            members.insert(("allowed", .bool(allowed.contains(cap.name))), at: 2)
            return .object(members)
        }
        return .json(200, .object([("backends", .array(list))]))
    }

    /// `GET /v1/nodes` (admin): the cluster's nodes, or this server alone.
    private func nodes() throws -> HTTPResponse {
        let list = try engine.nodes().map { n -> JSON in
            .object([("name", .string(n.name)), ("role", .string(n.role)), ("state", .string(n.state)),
                     ("capacity", .int(Int64(n.capacity))), ("running", .int(Int64(n.running))),
                     ("backends", .array(n.backends.map { .string($0) })),
                     ("lease_renewed_at", .string(Millis.rfc3339(n.leaseAt))), ("started_at", .string(Millis.rfc3339(n.startedAt)))])
        }
        return .json(200, .object([("nodes", .array(list))]))
    }

    private func stats(_ caller: Caller) throws -> HTTPResponse {
        let s = try store.stats(tenant: caller.scope)
        var counts: [(String, JSON)] = [("total", .int(Int64(s.total)))]
        for status in WorkloadStatus.allCases { counts.append((status.rawValue, .int(Int64(s.byStatus[status] ?? 0)))) }
        let backends = s.backends.keys.sorted().map { name -> (String, JSON) in
            let b = s.backends[name]!
            return (name, .object([("count", .int(Int64(b.count))), ("avg_ms", .double((b.avgMs * 10).rounded() / 10)),
                                   ("p50_ms", .int(b.p50Ms)), ("p95_ms", .int(b.p95Ms))]))
        }
        return .json(200, .object([
            ("workloads", .object(counts)),
            ("backends", .object(backends)),
            ("log_lines_total", .int(s.logLinesTotal)),
            ("sse_subscribers", .int(Int64(subscribers.value(tenant: caller.scope)))),
        ]))
    }
}

enum Query {
    static func int(_ req: HTTPRequest, _ name: String, default d: Int, range: ClosedRange<Int>) throws -> Int {
        guard let raw = req.query[name] else { return d }
        guard let n = Int(raw), range.contains(n) else {
            let upper = range.upperBound == Int.max ? "" : " to \(range.upperBound)"
            throw APIError.invalid(name, "\(name) must be a whole number from \(range.lowerBound)\(upper)")
        }
        return n
    }

    /// `true` or `false` (absent: false).
    static func flag(_ req: HTTPRequest, _ name: String) throws -> Bool {
        switch req.query[name] {
        case nil, "false": return false
        case "true": return true
        default: throw APIError.invalid(name, "\(name) must be true or false")
        }
    }

    static func enumValue<E: RawRepresentable & CaseIterable>(_ req: HTTPRequest, _ name: String, _: E.Type) throws -> E? where E.RawValue == String {
        guard let raw = req.query[name] else { return nil }
        guard let v = E(rawValue: raw) else {
            throw APIError.invalid(name, "\(name) must be one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return v
    }
}
