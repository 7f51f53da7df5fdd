/// The pending workloads and who runs how many: which one a free slot goes to.
///
/// At most `tenantLimit` of one tenant's workloads run at once (`KILN_TENANT_MAX_CONCURRENT`);
/// the rest wait. A free slot goes to the oldest pending workload of the tenant with the
/// fewest running, among tenants under their limit, so one tenant's backlog never starves
/// another's. Not thread-safe: the engine holds its lock around every call.
///
/// Written by hand: a few dozen lines over an array; a pick scans the queue, which the
/// queue limit keeps short.
struct FairQueue<Item> {
    private var pending: [(tenant: String, item: Item)] = []
    private var running: [String: Int] = [:]
    let tenantLimit: Int

    init(tenantLimit: Int) {
        self.tenantLimit = max(1, tenantLimit)
    }

    var count: Int { pending.count }
    var isEmpty: Bool { pending.isEmpty }

    func runningCount(of tenant: String) -> Int { running[tenant] ?? 0 }

    /// Whether a workload of `tenant` may take a free slot now.
    func mayStart(_ tenant: String) -> Bool { runningCount(of: tenant) < tenantLimit }

    mutating func enqueue(_ item: Item, tenant: String) {
        pending.append((tenant, item))
    }

    /// Counts a workload of `tenant` as running (one that started without queueing, or `next`'s).
    mutating func started(_ tenant: String) {
        running[tenant, default: 0] += 1
    }

    mutating func finished(_ tenant: String) {
        let n = runningCount(of: tenant) - 1
        running[tenant] = n > 0 ? n : nil
    }

    /// Takes the workload a free slot goes to (counted as running), or nil when every pending
    /// workload's tenant is at its limit.
    mutating func next() -> Item? {
        var best: (index: Int, running: Int)?
        var seen: Set<String> = []
        for (index, entry) in pending.enumerated() where !seen.contains(entry.tenant) {
            // The first entry of a tenant is its oldest.
            seen.insert(entry.tenant)
            let n = runningCount(of: entry.tenant)
            guard n < tenantLimit else { continue }
            if best == nil || n < best!.running { best = (index, n) }
        }
        guard let best else { return nil }
        let entry = pending.remove(at: best.index)
        started(entry.tenant)
        return entry.item
    }

    /// Removes the first pending item that `matches`; whether there was one.
    mutating func remove(where matches: (Item) -> Bool) -> Bool {
        guard let index = pending.firstIndex(where: { matches($0.item) }) else { return false }
        pending.remove(at: index)
        return true
    }

    mutating func removeAll() -> [Item] {
        defer { pending.removeAll() }
        return pending.map(\.item)
    }
}
