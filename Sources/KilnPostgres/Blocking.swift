import Foundation
import KilnStore
import PostgresNIO
import Synchronization

/// Runs postgres-nio's async calls for Kiln's synchronous store protocol.
///
/// The store is called from threads that may block (libmicrohttpd's, the engine's lanes and
/// writer, Dispatch queues), never from Swift concurrency's cooperative pool, so each call
/// waits on a semaphore for a task that does the async work. The wait is bounded: a
/// database that does not answer within `timeout` fails the call as `unavailable` (and
/// cancels the task), so no HTTP request hangs on a stopped server.
enum Blocking {
    static func run<T: Sendable>(timeout: Duration = .seconds(10), _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let result = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let task = Task {
            let r: Result<T, any Error>
            do { r = .success(try await body()) } catch { r = .failure(error) }
            result.withLock { $0 = r }
            done.signal()
        }
        let (s, a) = timeout.components
        let seconds = Double(s) + Double(a) / 1e18
        if done.wait(timeout: .now() + seconds) == .timedOut {
            task.cancel()
            throw StoreError.unavailable("PostgreSQL did not answer within \(Int(seconds)) s")
        }
        switch result.withLock({ $0 })! {
        case .success(let v): return v
        case .failure(let e): throw PostgresErrors.map(e)
        }
    }
}

/// postgres-nio's errors in Kiln's words. `PSQLError`'s own description is deliberately
/// generic (it may hold a query's values); this names the server's message and SQLSTATE,
/// never a bound value or a credential.
enum PostgresErrors {
    static func map(_ error: any Error) -> any Error {
        if error is StoreError { return error }
        guard let e = error as? PSQLError else {
            if error is CancellationError { return StoreError.unavailable("the PostgreSQL request was cancelled") }
            return error
        }
        if e.code == .server, let info = e.serverInfo {
            let state = info[.sqlState] ?? "?"
            let message = info[.message] ?? "error"
            // 08: connection exceptions; 57P0x: the server is shutting down or starting.
            if state.hasPrefix("08") || state.hasPrefix("57P") {
                return StoreError.unavailable("PostgreSQL is unavailable: \(message) (SQLSTATE \(state))")
            }
            return ServerError(text: "PostgreSQL: \(message) (SQLSTATE \(state))", sqlState: state)
        }
        return StoreError.unavailable("PostgreSQL connection: \(e.code.description)")
    }

    struct ServerError: Error, CustomStringConvertible {
        let text: String
        let sqlState: String
        var description: String { text }
    }
}
