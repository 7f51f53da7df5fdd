import Foundation
import KilnBackends
import KilnCore
import KilnLogs
import KilnStore
import Logging
import Metrics

/// Which backend runs a workload: the allowed list, `auto`, and why a choice is refused.
extension Engine {
    /// The named backend's capabilities, probed on first use; nil when it is not built in.
    public func capability(_ name: Isolation) -> BackendCapabilities? {
        probes.capability(name)
    }

    /// Every backend's capabilities (probing those that have not been yet).
    public var capabilities: [BackendCapabilities] { probes.all }

    func backend(_ name: Isolation) -> (any Backend)? {
        probes.backend(name)
    }

    /// Whether `name` may be used here and runs `runtime` (probing it if it has not been).
    private func able(_ name: Isolation, _ runtime: Runtime, _ allowed: Set<Isolation>) -> Bool {
        guard allowed.contains(name), let cap = capability(name) else { return false }
        return cap.available && cap.runtimes.contains(runtime)
    }

    /// The backends a caller may use: the server's list, narrowed by the token's own.
    public func allowedIsolation(limit: Set<Isolation>?) -> Set<Isolation> {
        limit.map { config.allowedIsolation.intersection($0) } ?? config.allowedIsolation
    }

    /// Strongest first: the order in which refusals list the allowed or available backends.
    static let strength: [Isolation] = [.gvisor, .sandbox, .isolate, .process]

    /// `auto`: `isolate` for node code with a default export, else the strongest available
    /// of gvisor, sandbox, process that runs the runtime; only backends in the allowed list
    /// (`allowedIsolation(limit:)`) are ever chosen.
    public func chooseBackend(runtime: Runtime, isolation: Isolation, code: String,
                              limit: Set<Isolation>? = nil) throws(EngineError) -> any Backend {
        let allowed = allowedIsolation(limit: limit)
        if isolation != .auto, !allowed.contains(isolation) {
            throw .isolationNotAllowed(requested: isolation, allowed: Engine.strength.filter(allowed.contains).map(\.rawValue))
        }
        // Only a refusal needs every backend probed: it lists those that could run this.
        var ableNames: [String] { Engine.strength.filter { able($0, runtime, allowed) }.map(\.rawValue) }
        if isolation == .auto {
            if runtime == .node, Engine.hasDefaultExport(code), able(.isolate, runtime, allowed), let b = backend(.isolate) {
                return b
            }
            for name in [Isolation.gvisor, .sandbox, .process] where able(name, runtime, allowed) {
                if let b = backend(name) { return b }
            }
            throw .isolationUnavailable(requested: .auto, reason: "no allowed backend can run \(runtime.rawValue) here", available: ableNames)
        }
        guard let cap = capability(isolation), cap.available else {
            let why = capability(isolation)?.reason ?? "not built into this server"
            throw .isolationUnavailable(requested: isolation, reason: why, available: ableNames)
        }
        guard cap.runtimes.contains(runtime), let b = backend(isolation) else {
            throw .isolationUnavailable(requested: isolation, reason: "it does not run \(runtime.rawValue)", available: ableNames)
        }
        return b
    }

    static func hasDefaultExport(_ code: String) -> Bool {
        code.range(of: #"(^|[\s;{}])export\s+default\b"#, options: .regularExpression) != nil
    }
}
