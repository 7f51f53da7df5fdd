import KilnHTTP
import Logging

/// What travels with a request through the middleware chain to its handler: its id and a
/// logger that carries it, the route it matched (matched once, in `KilnAPI.dispatch`), the
/// route's path parameters, and the caller the auth step let through.
public struct RequestContext: Sendable {
    public var requestID: String
    public var logger: Logger
    /// nil: no route matched (`match` says why).
    public var route: Router.Route?
    public var match: Router.Match
    public var parameters: Parameters
    /// Set by `AuthMiddleware`; `Caller.public` until then.
    public var caller: Caller = .public

    /// The route template for logs and metrics.
    public var routeLabel: String? {
        switch match {
        case .found(let route, _): return route.template
        case .methodNotAllowed(_, let template): return template
        case .notFound: return nil
        }
    }
}
