import KilnCore
import KilnStore
import Metrics

/// Whether the store accepts writes (SPEC §8, storage errors). A failed write (disk full,
/// read-only file, I/O error) marks it failing with its cause; `/readyz` then answers 503
/// and submissions 507. Only the engine's repair pass clears it, once every held write has
/// gone through and a probe write succeeded (`Engine+StoreRepair`), so readiness does not
/// flap on one lucky small write.
public final class StorageHealth: Sendable {
    private let cause = Locked<String?>(nil)
    private let gauge = Gauge(label: "kiln_storage_failing")

    public init() {}

    /// Why the store refuses writes, or nil while it accepts them.
    public var failure: String? { cause.withLock { $0 } }

    /// Returns true when this is the change from healthy to failing.
    @discardableResult
    func failed(_ why: String) -> Bool {
        let first = cause.withLock { c -> Bool in
            defer { c = why }
            return c == nil
        }
        if first { gauge.record(1) }
        return first
    }

    /// Returns true when the store was failing until now.
    @discardableResult
    func recovered() -> Bool {
        let was = cause.withLock { c -> Bool in
            defer { c = nil }
            return c != nil
        }
        if was { gauge.record(0) }
        return was
    }

    /// A store error that says the database cannot be written (as opposed to a refusal of
    /// the state machine, which a retry would not change).
    static func isStorageFailure(_ error: any Error) -> Bool {
        guard let e = error as? StoreError else { return true }
        if case .unavailable = e { return true }
        return false
    }

    /// A database that cannot be reached for now (cluster mode): the write is retried.
    static func isOutage(_ error: any Error) -> Bool {
        if case .unavailable = error as? StoreError { return true }
        return false
    }
}
