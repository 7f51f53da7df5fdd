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

    init(broker: LogBroker, id: String, after: Int64) {
        self.broker = broker
        self.id = id
        self.cursor = after
        self.subscription = broker.subscription(id, after: after)
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
        let stored: [LogLine]?
        do {
            stored = try broker.storedLines(id, after: cursor, limit: Swift.min(max, 64))
        } catch {
            return .failed("cannot read stored lines of \(id): \(error)")
        }
        if let stored, !stored.isEmpty {
            let lines = LogBudget.trim(stored, to: maxBytes)
            cursor = lines.last!.seq
            return .lines(lines)
        }
        let end: EndInfo?
        do {
            end = try broker.storedEnd(id)
        } catch {
            return .failed("cannot read workload \(id): \(error)")
        }
        if let end { return .end(end, lastSeq: Swift.max(cursor, end.logLines)) }
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

    /// No waker is called after this returns.
    public func cancel() {
        waker.withLock { $0 = (nil, true) }
        subscription?.cancel()
    }
}
