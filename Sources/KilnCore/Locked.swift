import Foundation

/// State behind an `NSLock`, used as `Synchronization.Mutex` is (`withLock`), for code that
/// runs under ThreadSanitizer (`make test-tsan`). On this toolchain TSan does not see
/// `Mutex`'s synchronization on Linux and reported accesses inside `withLock` as races
/// (LogBroker, in CI); a pthread mutex it does see. Written by hand because no library
/// type offers both.
///
/// `@unchecked Sendable`: `state` is only touched inside `lock`.
public final class Locked<State>: @unchecked Sendable {
    private let lock = NSLock()
    private var state: State

    public init(_ state: State) {
        self.state = state
    }

    public func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&state)
    }
}
