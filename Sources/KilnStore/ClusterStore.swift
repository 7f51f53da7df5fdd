import KilnCore

/// What a worker needs to run a workload submitted on another node: kept from submission
/// until the workload ends (cluster mode), then deleted with its environment.
public struct StoredSpec: Sendable, Equatable {
    public var code: String
    public var inputJSON: String
    public var env: [String: String]
    /// The submitting token's own isolation list, which narrows `auto` (nil: none).
    public var isolationLimit: Set<Isolation>?

    public init(code: String, inputJSON: String, env: [String: String], isolationLimit: Set<Isolation>?) {
        self.code = code
        self.inputJSON = inputJSON
        self.env = env
        self.isolationLimit = isolationLimit
    }
}

/// A workload a worker claimed: stored `running` on that node, with what it runs.
public struct ClaimedWorkload: Sendable {
    public var record: WorkloadRecord
    public var spec: StoredSpec

    public init(record: WorkloadRecord, spec: StoredSpec) {
        self.record = record
        self.spec = spec
    }
}

/// One node of a cluster, as the `nodes` table keeps it.
public struct NodeRecord: Sendable, Equatable {
    public var name: String
    public var role: String
    /// `live`, `stopped` (it left on a signal) or `lost` (its lease ran out).
    public var state: String
    public var capacity: Int
    public var running: Int
    public var leaseAt: Int64
    public var startedAt: Int64
    /// The backends it can run.
    public var backends: [String]

    public init(name: String, role: String, state: String, capacity: Int, running: Int, leaseAt: Int64, startedAt: Int64,
                backends: [String]) {
        self.name = name
        self.role = role
        self.state = state
        self.capacity = capacity
        self.running = running
        self.leaseAt = leaseAt
        self.startedAt = startedAt
        self.backends = backends
    }
}

/// What a node hears from the others (LISTEN/NOTIFY in PostgreSQL).
public enum ClusterSignal: Sendable, Equatable {
    /// Lines of `id` up to `seq` are stored.
    case logs(id: String, seq: Int64)
    /// `id`'s terminal status is stored.
    case ended(id: String)
    /// Someone asked to kill `id` (its owner acts).
    case kill(id: String)
    /// A workload was submitted: workers with room claim.
    case work
    /// The listening connection was (re)made: whatever was announced while it was down is
    /// lost, so every node re-reads what its subscribers and waiters hold.
    case connected
    /// The listening connection dropped (the node reconnects with backoff).
    case disconnected(String)
}

/// The queue, nodes and announcements of cluster mode, beside the workload store: one
/// database that every node shares, with no coordinator.
public protocol ClusterStore: WorkloadStore {
    /// Stores a pending workload and its spec in one transaction, and announces `work`.
    func insertPending(_ r: WorkloadRecord, spec: StoredSpec) throws
    /// Pending workloads, cluster-wide (the queue limit).
    func pendingCount() throws -> Int
    /// Claims up to `limit` pending workloads, oldest first, for `node`, skipping rows other
    /// workers hold locked. `candidates` filters in SQL: explicit isolations this node runs,
    /// and runtimes it can run under `auto`; `resolve` picks the backend of each candidate
    /// (nil: this node cannot run it, and it stays pending). At most `tenantLimit` of one
    /// tenant's workloads run cluster-wide.
    func claim(node: String, limit: Int, explicit: [Isolation], autoRuntimes: [Runtime], tenantLimit: Int,
               resolve: @escaping @Sendable (WorkloadRecord, StoredSpec) -> Isolation?) throws -> [ClaimedWorkload]
    /// Writes the node's lease (and its counts); returns when it was written.
    func renewLease(_ node: NodeRecord) throws
    func setNodeState(_ name: String, _ state: String) throws
    func nodes() throws -> [NodeRecord]
    /// Marks every node whose lease is older than `leaseBefore` lost and fails its running
    /// workloads with `node lost`; returns those workloads' ids (their ends are announced).
    func failLostNodes(leaseBefore: Int64, except: String, at now: Int64) throws -> [String]
    /// Fails `node`'s running workloads (a node that restarts under the same name).
    func failRunning(onNode node: String, error: String, at now: Int64) throws -> [String]
    /// Asks the owner of `id` to kill it.
    func announceKill(_ id: String) throws
    /// Starts listening: `handler` gets every signal, on a thread of the store's, in order.
    func listen(_ handler: @escaping @Sendable (ClusterSignal) -> Void)
    /// Stops listening and closes connections.
    func close()
}
