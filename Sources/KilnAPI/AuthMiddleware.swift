import KilnHTTP

/// The one auth step: every route states its `RouteAccess`, and no handler runs before
/// this step let its caller through. 401 without a valid token, 403 when the token's role
/// may not take the route's action. A `/v1` path that matches no route needs a valid
/// token too, so the API's routes cannot be mapped without one.
struct AuthMiddleware: Middleware {
    let tokens: TokenSet

    func handle(_ request: HTTPRequest, _ context: RequestContext, next: Responder) throws -> HTTPResult {
        var context = context
        if let route = context.route {
            context.caller = try authorize(request, route.access)
        } else if request.target.segments.first == "v1" {
            context.caller = try authenticate(request, queryToken: false)
        }
        return try next(request, context)
    }

    func authorize(_ request: HTTPRequest, _ access: RouteAccess) throws(APIError) -> Caller {
        guard let permission = access.permission else { return .public }
        let caller = try authenticate(request, queryToken: access.queryToken)
        guard caller.role.allows(permission) else {
            throw APIError(403, "forbidden", "the token \(caller.name) (role \(caller.role.rawValue)) may not \(permission.rawValue) here")
        }
        return caller
    }

    func authenticate(_ request: HTTPRequest, queryToken: Bool) throws(APIError) -> Caller {
        guard tokens.enabled else { return .unauthenticated }
        var presented: String? = nil
        if let h = request.header("authorization") {
            let parts = h.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { presented = String(parts[1]).trimmingCharacters(in: .whitespaces) }
        }
        if presented == nil, queryToken { presented = request.query["access_token"] }
        guard let presented else {
            throw APIError(401, "unauthorized", "missing bearer token", headers: [("WWW-Authenticate", "Bearer")])
        }
        guard let caller = tokens.authenticate(presented) else {
            throw APIError(401, "unauthorized", "wrong token", headers: [("WWW-Authenticate", "Bearer")])
        }
        return caller
    }
}
