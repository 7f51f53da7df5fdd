import KilnCore
import Metrics

/// Live SSE subscribers, in all and by tenant, for `/v1/stats` and the gauge.
final class SubscriberCount: Sendable {
    private let counts = Locked<(total: Int, byTenant: [String: Int])>((0, [:]))
    private let gauge = Gauge(label: "kiln_sse_subscribers")

    func add(_ d: Int, tenant: String) {
        let total = counts.withLock { c in
            c.total += d
            let n = (c.byTenant[tenant] ?? 0) + d
            c.byTenant[tenant] = n == 0 ? nil : n
            return c.total
        }
        gauge.record(total)
    }

    var value: Int { counts.withLock { $0.total } }

    /// One tenant's subscribers, or (nil) everyone's.
    func value(tenant: String?) -> Int {
        counts.withLock { c in tenant.map { c.byTenant[$0] ?? 0 } ?? c.total }
    }
}
