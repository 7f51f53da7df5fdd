import KilnCore

/// A token's role (SPEC: access control). `admin` may do everything in every tenant;
/// `submit` may submit, read and kill its own tenant's workloads; `read` may only read them.
public enum Role: String, Sendable, CaseIterable, Codable {
    case admin, submit, read

    func allows(_ permission: Permission) -> Bool {
        switch (self, permission) {
        case (.admin, _): return true
        case (.submit, .read), (.submit, .submit), (.submit, .kill): return true
        case (.read, .read): return true
        default: return false
        }
    }
}

/// What a route does, as the role check sees it.
public enum Permission: String, Sendable {
    case read, submit, kill, admin
}

/// Who may call a route. `open` routes (`/healthz`, `/readyz`, `/metrics`) need no token; every other
/// route needs a valid token whose role allows `permission`.
public struct RouteAccess: Sendable, Equatable {
    /// nil: no token needed.
    public var permission: Permission?
    /// The token may come as `?access_token=` (a browser's EventSource cannot send headers).
    public var queryToken: Bool

    public static let open = RouteAccess(permission: nil, queryToken: false)
    public static let read = RouteAccess(permission: .read, queryToken: false)
    public static let submit = RouteAccess(permission: .submit, queryToken: false)
    public static let kill = RouteAccess(permission: .kill, queryToken: false)
    public static let admin = RouteAccess(permission: .admin, queryToken: false)
    /// Reading a log stream, where the token may also be a query value.
    public static let readStream = RouteAccess(permission: .read, queryToken: true)
}

/// The identity a request acts as, once its token is checked.
public struct Caller: Sendable, Equatable {
    public var name: String
    public var tenant: String
    public var role: Role
    /// The token's own isolation list (nil: the server's list applies unchanged).
    public var isolation: Set<Isolation>?

    public init(name: String, tenant: String, role: Role, isolation: Set<Isolation>? = nil) {
        self.name = name
        self.tenant = tenant
        self.role = role
        self.isolation = isolation
    }

    /// Without any token configured every request is the admin of `default`: the server
    /// then listens on loopback only, unless told otherwise (`KILN_ALLOW_UNAUTHENTICATED`).
    public static let unauthenticated = Caller(name: "anonymous", tenant: Tenant.default, role: .admin)

    /// What an open route (`/healthz`, `/readyz`, `/metrics`) runs as: it may see no tenant's workloads.
    public static let `public` = Caller(name: "public", tenant: "", role: .read)

    /// Whether this caller may see a workload of `tenant` (others get 404, as if it did not exist).
    public func sees(tenant other: String) -> Bool {
        role == .admin || other == tenant
    }

    /// The tenant lists and counts are limited to; nil for an admin (every tenant).
    public var scope: String? { role == .admin ? nil : tenant }
}

public enum Tenant {
    public static let `default` = "default"

    /// Tenant names: 1 to 63 of `a-z 0-9 . _ -`, starting with a letter or digit.
    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), let first = bytes.first else { return false }
        let ok: (UInt8) -> Bool = { b in
            (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2E || b == 0x5F || b == 0x2D
        }
        return bytes.allSatisfy(ok) && ((first >= 0x61 && first <= 0x7A) || (first >= 0x30 && first <= 0x39))
    }
}
