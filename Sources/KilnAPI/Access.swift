/// Who may call a route. `open` routes (`/healthz`, `/metrics`) need no token; every other
/// route needs a valid token when the server has one.
public struct RouteAccess: Sendable, Equatable {
    public var needsToken: Bool
    /// The token may come as `?access_token=` (a browser's EventSource cannot send headers).
    public var queryToken: Bool

    public static let open = RouteAccess(needsToken: false, queryToken: false)
    public static let token = RouteAccess(needsToken: true, queryToken: false)
    /// Reading a log stream, where the token may also be a query value.
    public static let tokenOrQuery = RouteAccess(needsToken: true, queryToken: true)
}
