import KilnHTTP

/// CORS when `KILN_CORS_ORIGINS` is set: an allowed `Origin` gets
/// `Access-Control-Allow-Origin` on every answer (errors and streams included), and a
/// preflight is answered 204 without a token. The outermost step, so that every error
/// carries the headers too.
struct CORSMiddleware: Middleware {
    let origins: [String]?

    func handle(_ request: HTTPRequest, _ context: RequestContext, next: Responder) throws -> HTTPResult {
        if request.refusal == nil, request.method == "OPTIONS", origins != nil,
           request.header("access-control-request-method") != nil {
            return .now(HTTPResponse(status: 204, headers: [
                ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID"),
                ("Access-Control-Max-Age", "600"),
            ]).labelled(context.routeLabel))
        }
        let result = try next(request, context)
        guard let cors = headers(origin: request.header("origin")) else { return result }
        return result.map { $0.headers.append(contentsOf: cors) }
    }

    func headers(origin: String?) -> [(String, String)]? {
        guard let allowed = origins, let origin else { return nil }
        let expose = ("Access-Control-Expose-Headers", "Location, Retry-After, X-Request-ID")
        if allowed.contains("*") { return [("Access-Control-Allow-Origin", "*"), ("Vary", "Origin"), expose] }
        guard allowed.contains(origin) else { return nil }
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"), expose]
    }
}

extension HTTPResponse {
    func labelled(_ route: String?) -> HTTPResponse {
        var r = self
        r.route = route
        return r
    }
}
