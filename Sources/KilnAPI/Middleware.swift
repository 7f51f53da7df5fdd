import KilnHTTP

/// One step between the daemon and a route's handler (hummingbird 2's shape): it may
/// answer itself, or call `next` and change what comes back. A step may throw; `ErrorMiddleware`
/// renders what is thrown.
public protocol Middleware: Sendable {
    func handle(_ request: HTTPRequest, _ context: RequestContext, next: Responder) throws -> HTTPResult
}

public typealias Responder = @Sendable (HTTPRequest, RequestContext) throws -> HTTPResult

extension Array where Element == any Middleware {
    /// The chain, outermost first, around `handler`: built once.
    func chain(_ handler: @escaping Responder) -> Responder {
        reversed().reduce(handler) { next, middleware in
            { request, context in try middleware.handle(request, context, next: next) }
        }
    }
}

extension HTTPResult {
    /// Applies `change` to the response, now or when it comes.
    func map(_ change: @escaping @Sendable (inout HTTPResponse) -> Void) -> HTTPResult {
        switch self {
        case .now(var response):
            change(&response)
            return .now(response)
        case .later(let inner):
            let outer = HTTPPromise()
            inner.onResolve { response in
                var r = response
                change(&r)
                outer.resolve(r)
            }
            return .later(outer)
        }
    }
}
