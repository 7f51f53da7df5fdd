import Foundation
import KilnCore
import KilnLogs

/// What a backend is asked to run.
public struct ExecutionSpec: Sendable {
    public var id: String
    public var runtime: Runtime
    public var code: String
    /// JSON text of the input.
    public var inputJSON: String
    public var env: [String: String]
    public var resources: Resources

    public init(id: String, runtime: Runtime, code: String, inputJSON: String, env: [String: String], resources: Resources) {
        self.id = id
        self.runtime = runtime
        self.code = code
        self.inputJSON = inputJSON
        self.env = env
        self.resources = resources
    }
}

/// How a backend run ended.
public struct ExecutionResult: Sendable {
    public var exitCode: Int?
    public var timedOut: Bool
    public var cancelled: Bool
    /// A failure of the backend itself (could not start, crashed), or a limit it enforced.
    public var error: String?
    /// The output value, for backends that return one (isolate); process backends leave it
    /// nil and their stdout becomes the output.
    public var output: JSON?
    /// The output was cut at 1 MiB (then it is a string of the JSON text's first MiB).
    public var outputTruncated = false

    public init(exitCode: Int?, timedOut: Bool = false, cancelled: Bool = false, error: String? = nil, output: JSON? = nil) {
        self.exitCode = exitCode
        self.timedOut = timedOut
        self.cancelled = cancelled
        self.error = error
        self.output = output
    }
}

/// What a backend enforces, as `GET /v1/backends` reports it.
public struct BackendCapabilities: Sendable {
    public var name: Isolation
    public var available: Bool
    public var reason: String?
    public var runtimes: [Runtime]
    /// How it isolates ("none", "namespaces", "syscall", "V8 isolate").
    public var isolation: String
    public var limits: [(String, JSON)]
    public var network: String
    public var filesystem: String

    public init(name: Isolation, available: Bool, reason: String? = nil, runtimes: [Runtime], isolation: String,
                limits: [(String, JSON)], network: String, filesystem: String) {
        self.name = name
        self.available = available
        self.reason = reason
        self.runtimes = runtimes
        self.isolation = isolation
        self.limits = limits
        self.network = network
        self.filesystem = filesystem
    }

    public var json: JSON {
        .object([
            ("name", .string(name.rawValue)),
            ("available", .bool(available)),
            ("reason", reason.map { .string($0) } ?? .null),
            ("runtimes", .array(runtimes.map { .string($0.rawValue) })),
            ("isolation", .string(isolation)),
            ("limits", .object(limits)),
            ("network", .string(network)),
            ("filesystem", .string(filesystem)),
        ])
    }
}

/// Why a run is being stopped early.
public enum CancelReason: Sendable {
    case killed
    case shutdown
    /// Its log lines could not be stored (disk full, read-only or failing database).
    case storage
}

/// A cancellation a backend honours: it registers what stops its run.
public final class Cancellation: Sendable {
    private struct State {
        var reason: CancelReason?
        var handlers: [@Sendable () -> Void] = []
    }
    private let state = Locked(State())

    public init() {}

    public var reason: CancelReason? { state.withLock { $0.reason } }

    public func cancel(_ reason: CancelReason) {
        let handlers = state.withLock { s -> [@Sendable () -> Void] in
            guard s.reason == nil else { return [] }
            s.reason = reason
            defer { s.handlers.removeAll() }
            return s.handlers
        }
        for h in handlers { h() }
    }

    /// Runs `handler` on cancellation, at once when already cancelled.
    public func onCancel(_ handler: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.reason != nil { return true }
            s.handlers.append(handler)
            return false
        }
        if now { handler() }
    }
}

/// Receives a backend's output as it happens. Not thread-safe: one backend run writes
/// from one thread.
public protocol LogWriter: AnyObject {
    /// Raw bytes of stdout or stderr; the writer cuts them into lines.
    func write(_ stream: LogStream, _ bytes: [UInt8])
    /// One complete line (a backend that already has lines, like the isolate host).
    func writeLine(_ stream: LogStream, _ line: String)
    /// Called periodically while the workload runs, so batches reach the store.
    func tick()
}

/// An isolation backend.
public protocol Backend: Sendable {
    var name: Isolation { get }
    /// Probes and reports what the backend can do on this machine.
    func capabilities() -> BackendCapabilities
    /// Runs one workload to its end on the calling thread.
    func execute(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult
    /// Stops whatever the backend keeps running between workloads (server shutdown).
    func shutdown()
}

extension Backend {
    public func shutdown() {}
}
