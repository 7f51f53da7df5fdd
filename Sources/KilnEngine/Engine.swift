import Foundation
import KilnCore
import KilnBackends
import KilnLogs
import KilnStore
import Logging
import Metrics

/// Runs workloads: a queue in front of a Dispatch pool of `maxConcurrent` runs, the
/// state machine through the store, and every log line numbered, stored in batches and
/// published to the broker. A workload's terminal status is stored after its last line,
/// and published after that.
public final class Engine: @unchecked Sendable {
    public typealias Completion = @Sendable (WorkloadRecord) -> Void

    public let store: any WorkloadStore
    public let broker: LogBroker
    let config: EngineConfig
    let logger: Logger
    /// Each backend, probed when first needed (`capability(_:)`, `capabilities`).
    let probes: BackendProbes
    let ids = ULIDGenerator()
    let startedAt = Millis.now()
    /// All store writes of log batches and terminal states: in order per workload, and
    /// workloads in turn (`FairWriter`).
    let storeWriter = FairWriter()
    /// What of the writer's work is log lines, bounded (backpressure on the readers).
    let backlog: StoreBacklog
    /// Whether the store accepts writes; what it refused waits in `held` (`Engine+StoreRepair`).
    public let health = StorageHealth()
    let held = Locked<[String: HeldWrites]>([:])
    let repairScheduled = Locked(false)
    /// The pool: one serial queue per running workload, made on demand and reused.
    /// Serial queues get a thread of their own when they have work; a concurrent
    /// queue would share the global pool, which grows slowly while backends block.
    var idleLanes: [DispatchQueue] = []
    var laneCount = 0

    // Guarded by `lock`.
    let lock = NSLock()
    var jobs: [String: Job] = [:]
    var queue: FairQueue<Job>
    var runningCount = 0
    var reserved = 0
    var shuttingDown = false
    let idle = NSCondition()
    private let runningGauge = Gauge(label: "kiln_workloads_running")
    private let pendingGauge = Gauge(label: "kiln_workloads_pending")
    /// Cluster mode: this node's lease, claims and cross-node waiters (nil: a single server).
    private(set) var cluster: ClusterNode?

    public init(store: any WorkloadStore, broker: LogBroker, backends: [any Backend], config: EngineConfig, logger: Logger) {
        self.store = store
        self.broker = broker
        self.probes = BackendProbes(backends)
        self.backlog = StoreBacklog(perWorkload: config.unstoredPerWorkload, total: config.unstoredTotal)
        self.config = config
        self.queue = FairQueue(tenantLimit: config.tenantMaxConcurrent)
        self.logger = logger
        try? FileManager.default.createDirectory(atPath: config.workRoot, withIntermediateDirectories: true)
        if let c = config.cluster, let shared = store as? any ClusterStore {
            cluster = ClusterNode(store: shared, config: c, engine: self, logger: logger)
        }
    }

    /// Cluster mode: writes this node's first lease and starts listening and claiming (a
    /// single server has nothing to start).
    public func start() throws {
        try cluster?.start()
    }

    /// Publishes the running and pending counts to the metrics (after any change to them).
    func recordCounts() {
        lock.lock()
        let (running, pending) = (runningCount, queue.count + reserved)
        lock.unlock()
        runningGauge.record(running)
        pendingGauge.record(pending)
    }

    /// Marks what an earlier process left unfinished as failed ("server restarted").
    @discardableResult
    public func recover() throws -> [String] {
        // In a cluster only this node's own workloads were cut off; the pending ones are the
        // cluster's queue.
        let ids = try cluster.map { try $0.store.failRunning(onNode: $0.config.nodeName, error: "server restarted", at: Millis.now()) }
            ?? store.failUnfinished(error: "server restarted")
        if !ids.isEmpty { logger.warning("marked \(ids.count) unfinished workloads failed: server restarted") }
        return ids
    }

    // MARK: Shutdown

    /// Refuses new work, fails pending workloads, kills running ones ("server shutdown"),
    /// and waits (up to `timeout`) until every line and terminal state is stored.
    public func shutdown(timeout: TimeInterval = 8) {
        cluster?.stopClaiming()
        lock.lock()
        shuttingDown = true
        let pending = queue.removeAll()
        for job in pending { jobs[job.spec.id] = nil }
        let live = Array(jobs.values)
        lock.unlock()
        for job in pending { finishUnstarted(job, status: .failed, error: "server shutdown") }
        recordCounts()
        for job in live { job.cancellation.cancel(.shutdown) }
        let deadline = Date().addingTimeInterval(timeout)
        idle.lock()
        while Date() < deadline {
            lock.lock()
            let remaining = jobs.count
            lock.unlock()
            if remaining == 0 { break }
            _ = idle.wait(until: min(deadline, Date().addingTimeInterval(0.05)))
        }
        idle.unlock()
        storeWriter.waitUntilIdle()
        for b in probes.backends { b.shutdown() }
    }

    /// After `shutdown` (and once its streams are closed): a cluster node answers whoever
    /// waits for workloads that run elsewhere, marks itself stopped and closes the store.
    public func leaveCluster() {
        cluster?.finish()
    }
}
