import KilnBackends
import KilnCore

/// What each backend can do on this machine, probed the first time someone asks, once.
///
/// A probe runs a real workload (a gVisor sandbox, the Node host), so probing every backend
/// at start made each start pay for backends it might never use: on a two-core machine
/// the test suite's hundred servers spent more CPU in start-up gVisor and Node probes than
/// in the tests. Now a backend is probed when a workload, `/v1/backends` or the start
/// line's notice first needs it; concurrent askers wait for the one probe in flight.
final class BackendProbes: Sendable {
    private let entries: [(backend: any Backend, result: Locked<BackendCapabilities?>)]

    init(_ backends: [any Backend]) {
        entries = backends.map { ($0, Locked(nil)) }
    }

    var backends: [any Backend] { entries.map(\.backend) }

    func backend(_ name: Isolation) -> (any Backend)? {
        entries.first { $0.backend.name == name }?.backend
    }

    /// The named backend's capabilities (probing it now if nobody has), or nil if this
    /// server was built without it.
    func capability(_ name: Isolation) -> BackendCapabilities? {
        guard let entry = entries.first(where: { $0.backend.name == name }) else { return nil }
        // The lock is held through the probe, so that a second asker waits for the first
        // probe instead of starting another.
        return entry.result.withLock { cached in
            if let cached { return cached }
            let probed = entry.backend.capabilities()
            cached = probed
            return probed
        }
    }

    /// Every backend, in the order the server lists them; probes those not probed yet.
    var all: [BackendCapabilities] { entries.compactMap { capability($0.backend.name) } }
}
