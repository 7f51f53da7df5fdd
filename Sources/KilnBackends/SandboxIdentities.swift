import Glibc
import KilnCore

/// The host uids `sandbox` workloads run as (`KILN_SANDBOX_UIDS`), one per running
/// workload, so that no two share per-user kernel state: inotify instances, user
/// keyrings (`/proc/keys`), RLIMIT_NPROC counts, signals between them. A uid is handed out
/// round-robin (so one just freed is the last to be used again) and freed when its
/// workload ends, after the workload's cgroup was emptied.
public final class SandboxIdentities: Sendable {
    public static let defaultRange = 200_000...265_535
    public let range: ClosedRange<Int>
    private struct State {
        var next: Int
        var inUse: Set<Int> = []
    }
    private let state: Locked<State>

    public init(range: ClosedRange<Int> = SandboxIdentities.defaultRange) {
        self.range = range
        state = Locked(State(next: range.lowerBound))
    }

    /// A free uid, or nil when every uid of the range is running a workload.
    func acquire() -> uid_t? {
        state.withLock { s in
            guard s.inUse.count < range.count else { return nil }
            while s.inUse.contains(s.next) { s.next = s.next == range.upperBound ? range.lowerBound : s.next + 1 }
            let uid = s.next
            s.inUse.insert(uid)
            s.next = uid == range.upperBound ? range.lowerBound : uid + 1
            return uid_t(uid)
        }
    }

    func release(_ uid: uid_t) {
        _ = state.withLock { $0.inUse.remove(Int(uid)) }
    }

    var inUse: Int { state.withLock { $0.inUse.count } }
}
