import KilnBackends
import KilnCore

/// One workload the engine holds, pending or running.
final class Job: Sendable {
    let spec: ExecutionSpec
    let backend: any Backend
    let tenant: String
    let cancellation = Cancellation()
    /// Who is told the terminal record (synchronous answers, kill callers).
    let completions = Locked<[Engine.Completion]>([])

    init(spec: ExecutionSpec, backend: any Backend, tenant: String) {
        self.spec = spec
        self.backend = backend
        self.tenant = tenant
    }
}
