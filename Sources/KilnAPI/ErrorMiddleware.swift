import KilnEngine
import KilnHTTP
import Logging

/// Errors become answers in one place: whatever a later step or a handler throws (an
/// `APIError`, an `EngineError`, a store error) is rendered here as Kiln's JSON error, and
/// every answer is labelled with the matched route for the access log and metrics.
struct ErrorMiddleware: Middleware {
    /// Extra advice for an `auto` that found nothing: whether the process backend is
    /// available but off.
    let processIsOffButAvailable: @Sendable () -> Bool

    func handle(_ request: HTTPRequest, _ context: RequestContext, next: Responder) throws -> HTTPResult {
        let result: HTTPResult
        do {
            result = try next(request, context)
        } catch {
            result = .now(render(error, context))
        }
        let label = context.routeLabel
        return result.map { $0.route = label }
    }

    func render(_ error: any Error, _ context: RequestContext) -> HTTPResponse {
        switch error {
        case let e as APIError:
            return e.response
        case let e as EngineError:
            return APIError(e, processIsOffButAvailable: processIsOffButAvailable()).response
        default:
            context.logger.error("internal error: \(error)")
            return APIError(500, "internal", "internal error: \(error)").response
        }
    }
}

extension APIError {
    /// The answer to a refusal of the HTTP layer.
    init(_ refusal: HTTPRefusal) {
        switch refusal {
        case .badRequest(let why): self.init(400, "bad_request", why)
        case .headTooLarge(let limit): self.init(431, "headers_too_large", "the request line and headers are larger than \(limit) bytes")
        case .bodyTooLarge(let limit): self.init(413, "body_too_large", "request body is larger than \(limit) bytes")
        case .shuttingDown: self.init(503, "shutting_down", "the server is shutting down")
        }
    }

    init(_ error: EngineError, processIsOffButAvailable: Bool) {
        switch error {
        case .queueFull(let after):
            self.init(429, "queue_full", "too many pending workloads; retry later", headers: [("Retry-After", String(after))])
        case let .isolationUnavailable(requested, reason, available):
            let list = available.isEmpty ? "none" : available.joined(separator: ", ")
            var message = "isolation \(requested.rawValue) is not available (\(reason)); allowed and available for this runtime: \(list)"
            if available.isEmpty, processIsOffButAvailable {
                message += ". The process backend (no isolation: code runs with the server's own rights) is off unless KILN_ISOLATION lists it"
            }
            self.init(422, "isolation_unavailable", message, field: "isolation")
        case let .isolationNotAllowed(requested, allowed):
            let list = allowed.isEmpty ? "none" : allowed.joined(separator: ", ")
            self.init(422, "isolation_not_allowed", "isolation \(requested.rawValue) is not allowed here; allowed: \(list)", field: "isolation")
        case .shuttingDown:
            self.init(503, "shutting_down", "the server is shutting down")
        case .notFound(let id):
            self.init(404, "not_found", "workload \(id) not found")
        case .alreadyFinished(let r):
            self.init(409, "conflict", "workload \(r.id) is already \(r.status.rawValue)")
        case .storage(let why):
            self.init(500, "storage", why)
        case .storageUnavailable(let why):
            self.init(507, "insufficient_storage", "the server cannot store new workloads now: \(why)",
                      headers: [("Retry-After", "5")])
        }
    }
}
