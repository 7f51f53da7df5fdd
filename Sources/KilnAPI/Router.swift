import KilnHTTP

/// Path parameters of a matched route.
public struct Parameters: Sendable {
    var values: [String: String] = [:]
    public subscript(name: String) -> String? { values[name] }
}

/// A route's handler. It runs only after `AuthMiddleware` checked the route's
/// `RouteAccess` and put the caller in the context; what it throws is rendered by
/// `ErrorMiddleware`.
public typealias RouteHandler = @Sendable (HTTPRequest, RequestContext) throws -> HTTPResult

/// Method + path template routing over the parsed target's segments: `{name}` segments
/// capture one segment. Every route states who may call it (`RouteAccess`); there is no
/// way to add one without.
public struct Router: Sendable {
    public struct Route: Sendable {
        public var method: String
        public var template: String
        public var access: RouteAccess
        var segments: [Substring]
        var handler: RouteHandler
    }

    public enum Match: Sendable {
        case found(Route, Parameters)
        case methodNotAllowed(allowed: [String], template: String)
        case notFound
    }

    private var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: String, _ template: String, _ access: RouteAccess, _ handler: @escaping RouteHandler) {
        routes.append(Route(method: method, template: template, access: access,
                            segments: template.split(separator: "/"), handler: handler))
    }

    /// Every registered (method, template) pair, for the OpenAPI check.
    public var table: [(method: String, template: String)] { routes.map { ($0.method, $0.template) } }

    /// Every route with its access rule, for the access tests.
    public var accessTable: [(method: String, template: String, access: RouteAccess)] {
        routes.map { ($0.method, $0.template, $0.access) }
    }

    public func match(method: String, target: RequestTarget) -> Match {
        guard target.form == .origin || target.form == .absolute else { return .notFound }
        var segments = target.segments[...]
        // One trailing slash is the same resource: `/v1/workloads/` is the list.
        if segments.count > 1, segments.last == "" { segments = segments.dropLast() }
        // The templates that fit with the most literal segments: `/v1/workloads/async` is
        // the POST route's path, not a workload id, so PUT there is allowed POST only (its
        // Allow listed GET and DELETE, which answered 404 there).
        var fitting: [(Route, Parameters)] = []
        var literals = -1
        for route in routes {
            guard let params = Router.bind(route.segments, segments) else { continue }
            let n = route.segments.filter { !$0.hasPrefix("{") }.count
            if n > literals {
                fitting = []
                literals = n
            }
            if n == literals { fitting.append((route, params)) }
        }
        var allowed: [String] = []
        var allowedTemplate = ""
        for (route, params) in fitting {
            if route.method == method || (method == "HEAD" && route.method == "GET") {
                return .found(route, params)
            }
            allowed.append(route.method)
            allowedTemplate = route.template
        }
        if !allowed.isEmpty { return .methodNotAllowed(allowed: allowed, template: allowedTemplate) }
        return .notFound
    }

    private static func bind(_ template: [Substring], _ path: ArraySlice<String>) -> Parameters? {
        guard template.count == path.count else { return nil }
        var p = Parameters()
        for (t, s) in zip(template, path) {
            if t.hasPrefix("{") && t.hasSuffix("}") {
                if s.isEmpty { return nil }
                p.values[String(t.dropFirst().dropLast())] = s
            } else if t != s {
                return nil
            }
        }
        return p
    }
}
