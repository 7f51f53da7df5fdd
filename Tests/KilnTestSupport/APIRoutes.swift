/// Every route the server registers, with the permission its token's role needs (nil: no
/// token). The in-process test checks the router against this list, and the access test
/// runs every caller against every entry, so a new route cannot go untested.
public enum APIRoutes {
    public static let all: [(method: String, template: String, permission: String?)] = [
        ("GET", "/healthz", nil),
        ("GET", "/readyz", nil),
        ("GET", "/metrics", nil),
        ("POST", "/v1/workloads", "submit"),
        ("GET", "/v1/workloads", "read"),
        ("POST", "/v1/workloads/async", "submit"),
        ("GET", "/v1/workloads/{id}", "read"),
        ("DELETE", "/v1/workloads/{id}", "kill"),
        ("GET", "/v1/workloads/{id}/logs", "read"),
        ("GET", "/v1/workloads/{id}/logs/history", "read"),
        ("GET", "/v1/backends", "read"),
        ("GET", "/v1/stats", "read"),
        ("GET", "/v1/nodes", "admin"),
    ]
}
