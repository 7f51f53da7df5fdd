import KilnCore

/// Where Kiln keeps workloads and their log lines. The engine and the API see only this
/// protocol; `SQLiteStore` is the embedded default, and a PostgreSQL store for cluster mode
/// implements the same contract: the state machine enforced on every status change (a
/// transition the machine forbids throws `invalidTransition`), lines a gap-free prefix
/// `1..N` per workload, lists newest first by id.
public protocol WorkloadStore: Sendable {
    func insert(_ r: WorkloadRecord) throws
    /// Moves a workload to `status`, applying `change`, if the state machine allows it; the
    /// check and the write are one transaction.
    @discardableResult
    func transition(_ id: String, to status: WorkloadStatus, _ change: @Sendable (inout WorkloadRecord) -> Void) throws -> WorkloadRecord
    func get(_ id: String) throws -> WorkloadRecord?
    /// Newest first. The cursor is the id of the last record of the previous page.
    func list(limit: Int, cursor: String?, filter: WorkloadFilter) throws -> (records: [WorkloadRecord], nextCursor: String?)
    /// Marks every `pending` or `running` workload `failed` with `error`; returns their ids.
    func failUnfinished(error: String, at now: Int64) throws -> [String]
    /// Stores a batch of lines in one transaction.
    func appendLines(_ id: String, _ lines: [LogLine]) throws
    /// Lines with seq > `after`, in order, at most `limit`.
    func lines(_ id: String, after: Int64, limit: Int) throws -> [LogLine]
    /// The last `count` lines' first seq minus one: where a `tail=count` stream starts.
    func seqBeforeLast(_ id: String, count: Int) throws -> Int64
    func maxSeq(_ id: String) throws -> Int64
    /// Counts and durations, of one tenant's workloads or (nil) of all.
    func stats(tenant: String?) throws -> StoreStats
    /// Deletes a finished workload's record and log lines in one transaction; false when
    /// there was no such workload. Refuses (throws) one that is not finished.
    func purge(_ id: String) throws -> Bool
    /// Retention: deletes up to `limit` workloads that finished before `cutoff` (ms since
    /// the epoch), with their logs, in short transactions; returns how many.
    func purgeFinished(before cutoff: Int64, limit: Int, chunk: Int) throws -> Int
    /// A small real write, to learn whether the store accepts writes again after a failure.
    func checkWritable() throws
    /// Gives up to `maxPages` pages freed by deletions back to the file system; the bytes.
    func reclaimSpace(maxPages: Int) throws -> Int
}

extension WorkloadStore {
    @discardableResult
    public func transition(_ id: String, to status: WorkloadStatus) throws -> WorkloadRecord {
        try transition(id, to: status) { _ in }
    }

    public func failUnfinished(error: String) throws -> [String] {
        try failUnfinished(error: error, at: Millis.now())
    }

    public func stats() throws -> StoreStats { try stats(tenant: nil) }
}

/// A page of a list: `limit + 1` rows were read, newest first; the extra one only says
/// there is a next page, whose cursor is the last id kept. Both stores page through this.
public func listPage(_ rows: [WorkloadRecord], limit: Int) -> (records: [WorkloadRecord], nextCursor: String?) {
    guard rows.count > limit else { return (rows, nil) }
    let page = Array(rows.prefix(limit))
    return (page, page.last?.id)
}

public enum StoreError: Error, Equatable, CustomStringConvertible {
    case notFound(String)
    case invalidTransition(id: String, from: WorkloadStatus, to: WorkloadStatus)
    case cannotOpen(String)
    case notFinished(String)
    /// The database cannot be reached (a dropped connection, a server restarting): a retry
    /// may succeed, and nothing was written.
    case unavailable(String)

    public var description: String {
        switch self {
        case .notFinished(let id): return "workload \(id) has not finished"
        case .notFound(let id): return "workload \(id) not found"
        case let .invalidTransition(id, from, to): return "workload \(id) cannot move from \(from.rawValue) to \(to.rawValue)"
        case .cannotOpen(let why): return why
        case .unavailable(let why): return why
        }
    }
}

public struct WorkloadFilter: Sendable {
    public var status: WorkloadStatus?
    public var isolationUsed: Isolation?
    public var runtime: Runtime?
    /// Only this tenant's workloads (nil: every tenant).
    public var tenant: String?

    public init(status: WorkloadStatus? = nil, isolationUsed: Isolation? = nil, runtime: Runtime? = nil, tenant: String? = nil) {
        self.status = status
        self.isolationUsed = isolationUsed
        self.runtime = runtime
        self.tenant = tenant
    }
}

public struct BackendStats: Sendable, Equatable {
    public var count: Int
    public var avgMs: Double
    public var p50Ms: Int64
    public var p95Ms: Int64

    public init(count: Int, avgMs: Double, p50Ms: Int64, p95Ms: Int64) {
        self.count = count
        self.avgMs = avgMs
        self.p50Ms = p50Ms
        self.p95Ms = p95Ms
    }
}

public struct StoreStats: Sendable {
    public var byStatus: [WorkloadStatus: Int]
    public var total: Int
    public var backends: [String: BackendStats]
    public var logLinesTotal: Int64

    public init(byStatus: [WorkloadStatus: Int], total: Int, backends: [String: BackendStats], logLinesTotal: Int64) {
        self.byStatus = byStatus
        self.total = total
        self.backends = backends
        self.logLinesTotal = logLinesTotal
    }
}

