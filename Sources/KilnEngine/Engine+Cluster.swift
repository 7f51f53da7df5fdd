import Foundation
import KilnBackends
import KilnCore
import KilnLogs
import KilnStore
import Logging
import Metrics

/// What the engine does differently in a cluster (SPEC §10): submissions go to the shared
/// queue, workers start what they claim, and kills, waiters and streams reach workloads
/// that run on other nodes.
extension Engine {
    /// Whether this node runs `id` now.
    func isLocal(_ id: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return jobs[id] != nil
    }

    /// Kills `id` if it runs here (another node's kill announcement).
    func cancelLocal(_ id: String) {
        lock.lock()
        let job = jobs[id]
        lock.unlock()
        job?.cancellation.cancel(.killed)
    }

    /// Slots this worker can fill now.
    func freeSlots() -> Int {
        lock.lock()
        defer { lock.unlock() }
        return shuttingDown ? 0 : max(0, config.maxConcurrent - runningCount)
    }

    /// The allowed backends that work on this machine, strongest first.
    func runnableIsolations() -> [Isolation] {
        Engine.strength.filter { config.allowedIsolation.contains($0) && capability($0)?.available == true }
    }

    func runs(_ isolation: Isolation, _ runtime: Runtime) -> Bool {
        capability(isolation)?.runtimes.contains(runtime) == true
    }

    /// Submission in a cluster: checked against the allowed lists (which backend runs it is
    /// the claiming worker's choice), the cluster-wide queue limit, then stored pending
    /// with its spec; `onFinish` is answered wherever it runs.
    func submitToCluster(_ request: SubmitRequest, _ node: ClusterNode, onFinish: Completion?) throws(EngineError) -> WorkloadRecord {
        let allowed = allowedIsolation(limit: request.isolationLimit)
        if request.isolation != .auto, !allowed.contains(request.isolation) {
            throw .isolationNotAllowed(requested: request.isolation, allowed: Engine.strength.filter(allowed.contains).map(\.rawValue))
        }
        if allowed.isEmpty {
            throw .isolationUnavailable(requested: request.isolation, reason: "no backend is allowed", available: [])
        }
        if let failure = health.failure { throw .storageUnavailable(failure) }
        lock.lock()
        let stopping = shuttingDown
        lock.unlock()
        if stopping { throw .shuttingDown }
        let record = WorkloadRecord(id: ids.next(), status: .pending, runtime: request.runtime,
                                    isolation: request.isolation, resources: request.resources, createdAt: Millis.now(),
                                    tenant: request.tenant)
        do {
            if try node.store.pendingCount() >= config.queueLimit { throw EngineError.queueFull(retryAfterSeconds: 1) }
            if let onFinish { node.watch(record.id, onFinish) }
            try node.store.insertPending(record, spec: StoredSpec(code: request.code, inputJSON: request.inputJSON,
                                                                  env: request.env, isolationLimit: request.isolationLimit))
        } catch let e as EngineError {
            throw e
        } catch {
            node.unwatch(record.id)
            guard StorageHealth.isStorageFailure(error) else { throw .storage("\(error)") }
            storageFailed("\(error)")
            throw .storageUnavailable("\(error)")
        }
        Metrics.Counter(label: "kiln_workloads_submitted_total", dimensions: [("backend", request.isolation.rawValue)]).increment()
        return record
    }

    /// Starts a workload this worker claimed (stored `running` on this node by the claim).
    func startClaimed(_ c: ClaimedWorkload) {
        let r = c.record
        guard let backend = r.isolationUsed.flatMap(backend) else { return }
        let spec = ExecutionSpec(id: r.id, runtime: r.runtime, code: c.spec.code, inputJSON: c.spec.inputJSON,
                                 env: c.spec.env, resources: r.resources)
        let job = Job(spec: spec, backend: backend, tenant: r.tenant, claimed: true)
        broker.open(r.id)
        lock.lock()
        jobs[r.id] = job
        runningCount += 1
        let stopping = shuttingDown
        lock.unlock()
        recordCounts()
        if stopping { job.cancellation.cancel(.shutdown) }
        launch(job)
    }

    /// Kill in a cluster, of a workload this node does not run: a pending one is ended here
    /// (compare and set, so a claim racing it wins or loses cleanly), a running one is asked
    /// of its owner. `onFinish` gets the terminal record either way.
    func killInCluster(_ id: String, _ node: ClusterNode, onFinish: @escaping Completion) throws(EngineError) {
        let record: WorkloadRecord?
        do { record = try store.get(id) } catch { throw .storage("\(error)") }
        guard let record else { throw .notFound(id) }
        if record.status.isTerminal { throw .alreadyFinished(record) }
        node.watch(id, onFinish)
        if record.status == .pending {
            let at = Millis.now()
            do {
                _ = try store.transition(id, to: .killed) { r in
                    r.error = "killed before it started"
                    r.finishedAt = at
                }
                // Its `ended` announcement answers the watcher.
                return
            } catch StoreError.invalidTransition {
                // Claimed in the meantime (or ended): ask whoever has it.
            } catch {
                node.unwatch(id)
                throw .storage("\(error)")
            }
        }
        if isLocal(id) {
            cancelLocal(id)
        } else {
            node.askKill(id)
        }
    }

    /// Makes `record`'s live log followable on this node (a mirror of a workload that runs
    /// elsewhere); a single server has every live log already.
    public func follow(_ record: WorkloadRecord) {
        cluster?.feed.follow(record)
    }

    /// The ids of logs on this node that mirror other nodes' workloads.
    public var mirroredLogs: Set<String> { cluster?.feed.mirroredIDs ?? [] }

    /// The cluster's nodes (a single server: itself).
    public func nodes() throws -> [NodeRecord] {
        if let cluster { return try cluster.store.nodes() }
        let counts = self.counts
        return [NodeRecord(name: ProcessInfo.processInfo.hostName, role: ClusterConfig.Role.all.rawValue, state: "live",
                           capacity: config.maxConcurrent, running: counts.running, leaseAt: Millis.now(),
                           startedAt: startedAt, backends: runnableIsolations().map(\.rawValue))]
    }

    /// This node's role (a single server: `all`).
    public var role: ClusterConfig.Role { config.cluster?.role ?? .all }
}
