import Foundation
import KilnCore
import KilnStore
import Logging

/// This node's part in a cluster (SPEC §10): its lease, the claim loop, what it hears from
/// the other nodes, and the waiters for workloads that run elsewhere.
///
/// There is no coordinator. Every node renews its lease every `renewEvery` seconds and
/// fails the running workloads of nodes whose lease ran out (`node lost`). Workers claim
/// from the shared queue when told there is work (`work`), when a slot of theirs frees
/// up, and on each lease tick (a notification can be missed). A waiter (a synchronous
/// submission, a kill, a purge) of a workload that runs elsewhere is answered on its
/// `ended` announcement, or by the next tick's re-read.
final class ClusterNode: @unchecked Sendable {
    // `@unchecked`: `engine` is unowned (the engine owns this node and outlives it); every
    // mutable state is `Locked`.
    let store: any ClusterStore
    let config: ClusterConfig
    let feed: ClusterFeed
    unowned let engine: Engine
    let logger: Logger
    let startedAt = Millis.now()
    private let signals = DispatchQueue(label: "kiln.cluster.signals")
    private let claims = DispatchQueue(label: "kiln.cluster.claim")
    private let ticks = DispatchQueue(label: "kiln.cluster.lease")
    private let timer: DispatchSourceTimer

    private struct State {
        var claimScheduled = false
        var claimAgain = false
        var stopped = false
        /// Since when the lease has been renewed without a failure (nil: the last renewal failed).
        var renewingSince: Int64?
        var watchers: [String: [Engine.Completion]] = [:]
        /// Kills asked of other nodes, announced again on each tick until they end.
        var kills: Set<String> = []
        var listening = false
    }
    private let state = Locked(State())

    init(store: any ClusterStore, config: ClusterConfig, engine: Engine, logger: Logger) {
        self.store = store
        self.config = config
        self.engine = engine
        self.logger = logger
        self.feed = ClusterFeed(store: store, broker: engine.broker, logger: logger,
                                isLocal: { [unowned engine] id in engine.isLocal(id) })
        timer = DispatchSource.makeTimerSource(queue: ticks)
    }

    /// Writes the first lease, starts listening and the lease timer.
    func start() throws {
        try store.renewLease(leaseRecord())
        state.withLock { $0.renewingSince = Millis.now() }
        store.listen { [weak self] signal in
            // The store's listening thread must not wait on the database: hand it over.
            guard let node = self else { return }
            node.signals.async { node.handle(signal) }
        }
        timer.schedule(deadline: .now() + config.renewEvery, repeating: config.renewEvery, leeway: .milliseconds(100))
        timer.setEventHandler { [weak self] in self?.tick() }
        timer.resume()
        scheduleClaim()
    }

    /// Stops claiming (SIGTERM): the engine then shuts down as a single server does.
    func stopClaiming() {
        state.withLock { $0.stopped = true }
        claims.sync {}
    }

    /// After the engine's shutdown: answer whoever still waits with what is stored (the
    /// workload goes on elsewhere), mark this node stopped, and close the store.
    func finish() {
        timer.cancel()
        ticks.sync {}
        let waiting = state.withLock { s in defer { s.watchers.removeAll() }; return s.watchers }
        for (id, callbacks) in waiting {
            guard let r = try? store.get(id) else { continue }
            for c in callbacks { c(r) }
        }
        do { try store.setNodeState(config.nodeName, "stopped") } catch {
            logger.warning("cannot mark node \(config.nodeName) stopped: \(error)")
        }
        store.close()
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    // MARK: Signals

    private func handle(_ signal: ClusterSignal) {
        switch signal {
        case .logs(let id, let seq):
            feed.announced(id, seq: seq)
        case .ended(let id):
            feed.ended(id)
            answerIfEnded(id)
        case .kill(let id):
            engine.cancelLocal(id)
        case .work:
            scheduleClaim()
        case .connected:
            let was = state.withLock { s in defer { s.listening = true }; return s.listening }
            if was { logger.notice("listening to the cluster again") }
            feed.resync()
            recheckWaiters()
            scheduleClaim()
            engine.scheduleRepair()
        case .disconnected(let why):
            let was = state.withLock { s in defer { s.listening = false }; return s.listening }
            if was { engine.storageFailed("lost the database connection: \(why)") }
        }
    }

    // MARK: Waiters

    /// Calls `callback` with `id`'s terminal record, wherever it runs.
    func watch(_ id: String, _ callback: @escaping Engine.Completion) {
        state.withLock { $0.watchers[id, default: []].append(callback) }
    }

    func unwatch(_ id: String) {
        _ = state.withLock { $0.watchers.removeValue(forKey: id) }
    }

    /// Asks `id`'s owner to kill it, now and on each tick until it has ended.
    func askKill(_ id: String) {
        state.withLock { _ = $0.kills.insert(id) }
        do { try store.announceKill(id) } catch { logger.warning("cannot announce the kill of \(id): \(error); retrying") }
    }

    private func answerIfEnded(_ id: String) {
        guard state.withLock({ $0.watchers[id] != nil || $0.kills.contains(id) }) else { return }
        let record: WorkloadRecord?
        do { record = try store.get(id) } catch { return }  // the next tick reads it again
        if let record, !record.status.isTerminal { return }
        let callbacks = state.withLock { s -> [Engine.Completion] in
            s.kills.remove(id)
            return s.watchers.removeValue(forKey: id) ?? []
        }
        guard let record else {
            logger.warning("workload \(id) was purged while \(callbacks.count) waited for its end")
            return
        }
        for c in callbacks { c(record) }
    }

    private func recheckWaiters() {
        for id in state.withLock({ Array(Set($0.watchers.keys).union($0.kills)) }) { answerIfEnded(id) }
    }

    // MARK: Lease

    func leaseRecord() -> NodeRecord {
        let counts = engine.counts
        let backends = config.role.runsWorkloads ? engine.runnableIsolations().map(\.rawValue) : []
        return NodeRecord(name: config.nodeName, role: config.role.rawValue, state: "live",
                          capacity: config.role.runsWorkloads ? engine.config.maxConcurrent : 0,
                          running: counts.running, leaseAt: Millis.now(), startedAt: startedAt, backends: backends)
    }

    private func tick() {
        let now = Millis.now()
        do {
            try store.renewLease(leaseRecord())
            let since = state.withLock { s -> Int64 in
                if s.renewingSince == nil { s.renewingSince = now }
                return s.renewingSince!
            }
            // Only a node whose own lease has held for a whole lease period judges others:
            // one that was cut off itself cannot tell a lost node from its own outage.
            let lease = Int64(config.leaseSeconds) * 1000
            if now - since >= lease {
                let lost = try store.failLostNodes(leaseBefore: now - lease, except: config.nodeName, at: now)
                if !lost.isEmpty { logger.warning("failed \(lost.count) workloads of lost nodes: node lost") }
            }
        } catch {
            state.withLock { $0.renewingSince = nil }
            engine.storageFailed("cannot renew this node's lease: \(error)")
        }
        for id in state.withLock({ Array($0.kills) }) {
            if let r = try? store.get(id), r.status == .running { try? store.announceKill(id) }
        }
        recheckWaiters()
        feed.resync()
        scheduleClaim()
    }

    // MARK: Claims

    /// Claims what this worker has room for, on the claim queue; calls coalesce.
    func scheduleClaim() {
        guard config.role.runsWorkloads else { return }
        let go = state.withLock { s -> Bool in
            if s.stopped { return false }
            if s.claimScheduled { s.claimAgain = true; return false }
            s.claimScheduled = true
            return true
        }
        if go { claims.async { [self] in claimLoop() } }
    }

    private func claimLoop() {
        while true {
            state.withLock { $0.claimAgain = false }
            let full = claimOnce()
            let again = state.withLock { s -> Bool in
                if !s.stopped && (s.claimAgain || full) { return true }
                s.claimScheduled = false
                return false
            }
            if !again { return }
        }
    }

    /// One claim; true when it took as many as it had room for (there may be more).
    private func claimOnce() -> Bool {
        let room = engine.freeSlots()
        guard room > 0, !isStopped else { return false }
        let explicit = engine.runnableIsolations()
        let runtimes = Runtime.allCases.filter { rt in explicit.contains { engine.runs($0, rt) } }
        let claimed: [ClaimedWorkload]
        do {
            claimed = try store.claim(node: config.nodeName, limit: room, explicit: explicit, autoRuntimes: runtimes,
                                      tenantLimit: engine.config.tenantMaxConcurrent) { [engine] record, spec in
                try? engine.chooseBackend(runtime: record.runtime, isolation: record.isolation, code: spec.code,
                                          limit: spec.isolationLimit).name
            }
        } catch {
            if StorageHealth.isStorageFailure(error) { engine.storageFailed("cannot claim workloads: \(error)") }
            logger.warning("cannot claim workloads: \(error)")
            return false
        }
        for c in claimed { engine.startClaimed(c) }
        return claimed.count == room
    }
}
