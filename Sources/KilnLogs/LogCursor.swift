import Foundation
import KilnCore

/// A reader of one workload's log from a seq on, whether the workload still runs or
/// ended long ago: what every stream reads through. Read it from one thread at a time.
///
/// While the workload has a live log it reads a `LogSubscription` (the window, and the
/// store behind it). Without one it reads the store, then the stored end; a workload that
/// is stored but not yet open in the broker (the instant after it was submitted) is
/// looked for again shortly. A store error answers `.failed`, never a premature `.end`.
///
/// `@unchecked Sendable`: `cursor` and `subscription` are touched only by the single
/// reader; the waker is `Locked`.
public final class LogCursor: @unchecked Sendable {
    public let id: String
    public private(set) var cursor: Int64
    private let broker: LogBroker
    private var subscription: LogSubscription?
    private let waker = Locked<(waker: (@Sendable () -> Void)?, cancelled: Bool)>((nil, false))
    private let storeRead: PendingStoreRead

    init(broker: LogBroker, id: String, after: Int64) {
        self.broker = broker
        self.id = id
        self.cursor = after
        self.subscription = broker.subscription(id, after: after)
        self.storeRead = PendingStoreRead(runner: broker.storeReads)
    }

    /// Whether it reads a live log (the workload had not ended when it was last read).
    public var isLive: Bool { subscription != nil }

    /// Called (from any thread) when `next` answered `.wait` and something arrived.
    public func setWaker(_ waker: @escaping @Sendable () -> Void) {
        self.waker.withLock { $0.waker = waker }
        subscription?.setWaker(waker)
    }

    private var currentWaker: (@Sendable () -> Void)? { waker.withLock { $0.cancelled ? nil : $0.waker } }

    /// The next lines; with `framed`, lines still in the live window come encoded.
    public func next(max: Int = 512, maxBytes: Int = 1 << 20, framed: Bool = false) -> LogRead {
        if let sub = subscription {
            let r = sub.next(max: max, maxBytes: maxBytes, framed: framed)
            cursor = sub.cursor
            return r
        }
        // A finished workload: the store's lines, then (once there are none) its stored end,
        // read together on the broker's store runner (`.wait` until it answers).
        let broker = self.broker, id = self.id, after = cursor, limit = Swift.min(max, 256)
        let wake: @Sendable () -> Void = { [weak self] in self?.currentWaker?() }
        let outcome = storeRead.ask(.lines(after: after), wake: wake) {
            let lines: [LogLine]?
            do {
                lines = try broker.storedLines(id, after: after, limit: limit)
            } catch {
                throw StoreReadFailure(text: "cannot read stored lines of \(id): \(error)")
            }
            if let lines, !lines.isEmpty { return .lines(lines) }
            do {
                return .end(try broker.storedEnd(id))
            } catch {
                throw StoreReadFailure(text: "cannot read workload \(id): \(error)")
            }
        }
        switch outcome {
        case .pending:
            return .wait
        case .failed(let why):
            return .failed(why)
        case .answered(.lines(let stored?)) where !stored.isEmpty:
            let lines = LogBudget.trim(stored, to: maxBytes)
            cursor = lines.last!.seq
            return .lines(lines)
        case .answered(.end(let end?)):
            return .end(end, lastSeq: Swift.max(cursor, end.logLines))
        case .answered:
            break
        }
        // Not terminal and not live yet: just submitted. Attach when the broker has it.
        if let sub = broker.subscription(id, after: cursor) {
            if let w = currentWaker { sub.setWaker(w) }
            subscription = sub
            let r = sub.next(max: max, maxBytes: maxBytes, framed: framed)
            cursor = sub.cursor
            return r
        }
        if let w = currentWaker { DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) { w() } }
        return .wait
    }

    /// A store error, already worded for the stream's `error` event.
    private struct StoreReadFailure: Error, CustomStringConvertible {
        let text: String
        var description: String { text }
    }

    /// No waker is called after this returns.
    public func cancel() {
        waker.withLock { $0 = (nil, true) }
        subscription?.cancel()
    }
}
