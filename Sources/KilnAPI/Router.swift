import KilnSystem

/// Path parameters of a matched route.
public struct Parameters: Sendable {
    var values: [String: String] = [:]
    public subscript(name: String) -> String? { values[name] }
}

public typealias RouteHandler = @Sendable (HTTPRequest, Parameters) -> HTTPResult

/// Method + path template routing: `{name}` segments capture one path segment.
public struct Router: Sendable {
    struct Route: Sendable {
        var method: String
        var template: String
        var segments: [Substring]
        var handler: RouteHandler
    }

    public enum Match {
        case found(RouteHandler, Parameters, template: String)
        case methodNotAllowed(allowed: [String], template: String)
        case notFound
    }

    private var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: String, _ template: String, _ handler: @escaping RouteHandler) {
        routes.append(Route(method: method, template: template, segments: template.split(separator: "/"), handler: handler))
    }

    /// Every registered (method, template) pair, for the OpenAPI check.
    public var table: [(method: String, template: String)] { routes.map { ($0.method, $0.template) } }

    public func match(method: String, path: String) -> Match {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        let segments = parts.last == "" && parts.count > 1 ? Array(parts.dropLast()) : Array(parts)
        var allowed: [String] = []
        var allowedTemplate = ""
        for route in routes {
            guard let params = Router.bind(route.segments, segments) else { continue }
            if route.method == method || (method == "HEAD" && route.method == "GET") {
                return .found(route.handler, params, template: route.template)
            }
            allowed.append(route.method)
            allowedTemplate = route.template
        }
        if !allowed.isEmpty { return .methodNotAllowed(allowed: allowed, template: allowedTemplate) }
        return .notFound
    }

    private static func bind(_ template: [Substring], _ path: [Substring]) -> Parameters? {
        guard template.count == path.count else { return nil }
        var p = Parameters()
        for (t, s) in zip(template, path) {
            if t.hasPrefix("{") && t.hasSuffix("}") {
                if s.isEmpty { return nil }
                p.values[String(t.dropFirst().dropLast())] = String(s)
            } else if t != s {
                return nil
            }
        }
        return p
    }
}
