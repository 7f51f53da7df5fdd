import KilnBackends
import KilnCore

/// One workload the engine holds, pending or running.
final class Job: @unchecked Sendable {
    let spec: ExecutionSpec
    let backend: any Backend
    let tenant: String
    let cancellation = Cancellation()
    /// Guarded by the engine's lock.
    var completions: [Engine.Completion] = []

    init(spec: ExecutionSpec, backend: any Backend, tenant: String) {
        self.spec = spec
        self.backend = backend
        self.tenant = tenant
    }
}
