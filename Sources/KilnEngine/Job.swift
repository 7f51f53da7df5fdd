import KilnBackends
import KilnCore

/// One workload the engine holds, pending or running.
final class Job: Sendable {
    let spec: ExecutionSpec
    let backend: any Backend
    let tenant: String
    /// Claimed from the cluster's queue: stored `running` already, and not in the local queue.
    let claimed: Bool
    let cancellation = Cancellation()
    /// Who is told the terminal record (synchronous answers, kill callers).
    let completions = Locked<[Engine.Completion]>([])

    init(spec: ExecutionSpec, backend: any Backend, tenant: String, claimed: Bool = false) {
        self.spec = spec
        self.claimed = claimed
        self.backend = backend
        self.tenant = tenant
    }
}
