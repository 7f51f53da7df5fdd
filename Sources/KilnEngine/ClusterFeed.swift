import Foundation
import KilnCore
import KilnLogs
import KilnStore
import Logging

/// Cross-node live logs (SPEC §10): a workload that runs on another node gets a mirror in
/// this node's broker while someone here follows it, fed from the store.
///
/// The owner stores each batch of lines and announces it (`logs(id, seq)`); the feed reads
/// the new lines of a mirrored workload once, whatever the number of subscribers on this
/// node, and publishes them to the mirror, which fans them out as it does a local log. Its
/// terminal status is announced after it is committed (`ended`); the feed reads the last
/// lines, then closes the mirror with the stored end. A notification missed while the
/// listening connection was down is made up for by `resync`, which re-reads every mirror
/// from the seq it holds (every lease tick, and on each reconnect).
///
/// Reads run on one serial queue; announcements for the same workload are coalesced, so a
/// burst of batches costs one query per batch at most, and fewer when the feed lags.
final class ClusterFeed: Sendable {
    private let store: any WorkloadStore
    private let broker: LogBroker
    private let logger: Logger
    /// Whether the engine runs `id` itself (its own writer feeds that log).
    private let isLocal: @Sendable (String) -> Bool
    private let queue = DispatchQueue(label: "kiln.cluster.feed")

    private struct Mirror {
        /// The last seq published to the mirror.
        var position: Int64
        /// Its end may have been announced: the next read checks the record.
        var ended = false
        var scheduled = false
    }
    private let mirrors = Locked<[String: Mirror]>([:])
    /// Lines read per query.
    static let page = 1000

    init(store: any WorkloadStore, broker: LogBroker, logger: Logger, isLocal: @escaping @Sendable (String) -> Bool) {
        self.store = store
        self.broker = broker
        self.logger = logger
        self.isLocal = isLocal
    }

    /// Makes sure `record`'s log can be followed here: a mirror, unless it runs on this node
    /// or has ended. Called before a stream's cursor is made, so the cursor reads the mirror.
    func follow(_ record: WorkloadRecord) {
        let id = record.id
        guard !record.status.isTerminal, broker.log(id) == nil, !isLocal(id) else { return }
        let stored: Int64
        do { stored = try store.maxSeq(id) } catch {
            // The stream reads the store itself, and will see the lines once it can.
            logger.warning("cannot mirror the log of \(id): \(error)")
            return
        }
        let added = mirrors.withLock { m -> Bool in
            guard m[id] == nil else { return false }
            m[id] = Mirror(position: stored)
            return true
        }
        guard added else { return }
        broker.open(id, after: stored)
        // It may have ended (or gained lines) between the read of its record and now.
        schedule(id)
    }

    /// Whether `id` is mirrored here (for tests and the record's live line count).
    func isMirrored(_ id: String) -> Bool { mirrors.withLock { $0[id] != nil } }

    func announced(_ id: String, seq: Int64) {
        let behind = mirrors.withLock { m in m[id].map { $0.position < seq } ?? false }
        if behind { schedule(id) }
    }

    func ended(_ id: String) {
        let go = mirrors.withLock { m -> Bool in
            guard m[id] != nil else { return false }
            m[id]!.ended = true
            return true
        }
        if go { schedule(id) }
    }

    /// Re-reads every mirror: what was announced while this node was not listening.
    func resync() {
        let ids = mirrors.withLock { m -> [String] in
            for id in m.keys { m[id]!.ended = true }  // "maybe ended": the read checks the record
            return Array(m.keys)
        }
        for id in ids { schedule(id) }
    }

    private func schedule(_ id: String) {
        let go = mirrors.withLock { m -> Bool in
            guard let x = m[id], !x.scheduled else { return false }
            m[id]!.scheduled = true
            return true
        }
        if go { queue.async { [self] in drain(id) } }
    }

    /// Publishes `id`'s stored lines after the mirror's position; closes the mirror once
    /// its record is terminal and every line is in.
    private func drain(_ id: String) {
        guard let start = mirrors.withLock({ m -> Mirror? in
            guard let x = m[id] else { return nil }
            m[id]!.scheduled = false
            m[id]!.ended = false
            return x
        }) else { return }
        if isLocal(id) {
            // This node claimed it: the engine's writer feeds the same log from now on.
            mirrors.withLock { $0[id] = nil }
            return
        }
        var position = start.position
        do {
            while true {
                let lines = try store.lines(id, after: position, limit: ClusterFeed.page)
                if let last = lines.last?.seq {
                    broker.publish(id, lines)
                    broker.markPersisted(id, upTo: last)
                    position = last
                }
                if lines.count < ClusterFeed.page { break }
            }
            mirrors.withLock { $0[id]?.position = position }
            guard start.ended else { return }
            guard let record = try store.get(id) else {
                // Purged: nothing more will come.
                close(id, EndInfo(status: .failed, exitCode: nil, error: "workload purged", logLines: position))
                return
            }
            guard record.status.isTerminal else { return }
            // Lines stored just before the end, after the read above.
            let rest = try store.lines(id, after: position, limit: Int(max(0, record.logLines - position)) + 1)
            if let last = rest.last?.seq {
                broker.publish(id, rest)
                broker.markPersisted(id, upTo: last)
            }
            close(id, EndInfo(record: record))
        } catch {
            // The database is away: the resync after reconnecting reads on from here.
            mirrors.withLock { $0[id]?.position = position }
            logger.warning("cannot read the log of \(id) for its mirror: \(error)")
        }
    }

    private func close(_ id: String, _ end: EndInfo) {
        mirrors.withLock { $0[id] = nil }
        guard !isLocal(id) else { return }
        broker.close(id, end: end)
    }

    /// The ids mirrored here (they are not this node's to end at shutdown).
    var mirroredIDs: Set<String> { mirrors.withLock { Set($0.keys) } }
}
