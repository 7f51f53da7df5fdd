import KilnCore

public struct EngineConfig: Sendable {
    public var maxConcurrent: Int
    /// How many of one tenant's workloads may run at once (`KILN_TENANT_MAX_CONCURRENT`);
    /// at most `maxConcurrent`.
    public var tenantMaxConcurrent: Int
    public var queueLimit: Int
    /// Where per-workload work folders are made.
    public var workRoot: String
    /// The backends that may run workloads (`KILN_ISOLATION`): `auto` picks among them and
    /// any other is refused. `process` runs code with the server's own rights, so it is
    /// left out unless named.
    public var allowedIsolation: Set<Isolation>
    /// Bytes of log text one workload may store (`KILN_MAX_LOG_BYTES`); past it, one
    /// marker line, `log_truncated`, and the rest of its output is read and discarded.
    public var maxLogBytes: Int
    /// Bytes of log lines read and not yet stored, per workload and in all (`StoreBacklog`):
    /// past them a workload's pipes are not read until the store catches up.
    public var unstoredPerWorkload: Int
    public var unstoredTotal: Int

    /// Cluster mode (a `ClusterStore`): this node's name and role; nil on a single server.
    public var cluster: ClusterConfig?

    public static let defaultMaxLogBytes = 64 << 20

    public init(maxConcurrent: Int, tenantMaxConcurrent: Int? = nil, queueLimit: Int, workRoot: String,
                allowedIsolation: Set<Isolation> = Isolation.allowedByDefault,
                maxLogBytes: Int = EngineConfig.defaultMaxLogBytes,
                unstoredPerWorkload: Int = 4 << 20, unstoredTotal: Int = 32 << 20, cluster: ClusterConfig? = nil) {
        self.cluster = cluster
        self.maxLogBytes = max(1, maxLogBytes)
        self.unstoredPerWorkload = max(1, unstoredPerWorkload)
        self.unstoredTotal = max(1, unstoredTotal)
        self.maxConcurrent = max(1, maxConcurrent)
        self.tenantMaxConcurrent = min(self.maxConcurrent, max(1, tenantMaxConcurrent ?? maxConcurrent))
        self.queueLimit = max(0, queueLimit)
        self.workRoot = workRoot
        self.allowedIsolation = allowedIsolation.subtracting([.auto])
    }
}

/// One node of a cluster (SPEC §10).
public struct ClusterConfig: Sendable {
    public enum Role: String, Sendable, CaseIterable {
        /// Answers the API and runs workloads.
        case all
        /// Answers the API; runs nothing.
        case api
        /// Runs workloads (and answers the API too).
        case worker

        public var runsWorkloads: Bool { self != .api }
    }

    public var role: Role
    public var nodeName: String
    /// A node whose lease is older than this is lost (`KILN_NODE_LEASE_S`).
    public var leaseSeconds: Int
    /// How often the lease is renewed.
    public var renewEvery: Double

    public init(role: Role, nodeName: String, leaseSeconds: Int = 10, renewEvery: Double = 2) {
        self.role = role
        self.nodeName = nodeName
        self.leaseSeconds = max(1, leaseSeconds)
        self.renewEvery = min(renewEvery, Double(self.leaseSeconds) / 2)
    }
}

/// A validated submission.
public struct SubmitRequest: Sendable {
    public var runtime: Runtime
    public var code: String
    public var inputJSON: String
    public var isolation: Isolation
    public var resources: Resources
    public var env: [String: String]
    /// The tenant the workload belongs to.
    public var tenant: String
    /// The submitting token's own isolation list, which narrows the server's (nil: none).
    public var isolationLimit: Set<Isolation>?

    public init(runtime: Runtime, code: String, inputJSON: String = "null", isolation: Isolation = .auto,
                resources: Resources, env: [String: String] = [:], tenant: String = "default",
                isolationLimit: Set<Isolation>? = nil) {
        self.runtime = runtime
        self.code = code
        self.inputJSON = inputJSON
        self.isolation = isolation
        self.resources = resources
        self.env = env
        self.tenant = tenant
        self.isolationLimit = isolationLimit
    }
}

public enum EngineError: Error, Equatable {
    case queueFull(retryAfterSeconds: Int)
    /// The requested backend cannot run this runtime here; `available` can.
    case isolationUnavailable(requested: Isolation, reason: String, available: [String])
    /// The requested backend is not in the caller's allowed list (`allowed`, strongest first).
    case isolationNotAllowed(requested: Isolation, allowed: [String])
    case shuttingDown
    case notFound(String)
    case alreadyFinished(WorkloadRecord)
    case storage(String)
    /// The store refuses writes (disk full, read-only, I/O error): 507, nothing was stored.
    case storageUnavailable(String)
}
