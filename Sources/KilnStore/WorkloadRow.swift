internal import GRDB
import KilnCore

/// A row of the `workloads` table as a GRDB Codable record: the one place that names the
/// columns. A new field is a property here and in `init(_:)`/`record`.
struct WorkloadRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "workloads"

    var id: String
    var status: String
    var runtime: String
    var isolation: String
    var isolation_used: String?
    var exit_code: Int?
    var output: String
    var output_truncated: Bool
    var error: String?
    var cpus: Int
    var mem_mb: Int
    var timeout_s: Int
    var pids: Int
    var disk_mb: Int
    var log_lines: Int64
    var log_truncated: Bool
    var duration_ms: Int64?
    var created_at: Int64
    var started_at: Int64?
    var finished_at: Int64?
    var tenant: String

    init(_ r: WorkloadRecord) {
        id = r.id
        status = r.status.rawValue
        runtime = r.runtime.rawValue
        isolation = r.isolation.rawValue
        isolation_used = r.isolationUsed?.rawValue
        exit_code = r.exitCode
        output = r.outputJSON
        output_truncated = r.outputTruncated
        error = r.error
        cpus = r.resources.cpus
        mem_mb = r.resources.memMB
        timeout_s = r.resources.timeoutS
        pids = r.resources.pids
        disk_mb = r.resources.diskMB
        log_lines = r.logLines
        log_truncated = r.logTruncated
        duration_ms = r.durationMs
        created_at = r.createdAt
        started_at = r.startedAt
        finished_at = r.finishedAt
        tenant = r.tenant
    }

    var record: WorkloadRecord {
        WorkloadRecord(
            id: id,
            status: WorkloadStatus(rawValue: status) ?? .failed,
            runtime: Runtime(rawValue: runtime) ?? .shell,
            isolation: Isolation(rawValue: isolation) ?? .auto,
            isolationUsed: isolation_used.flatMap(Isolation.init(rawValue:)),
            exitCode: exit_code,
            outputJSON: output,
            outputTruncated: output_truncated,
            error: error,
            resources: Resources(cpus: cpus, memMB: mem_mb, timeoutS: timeout_s, pids: pids, diskMB: disk_mb),
            logLines: log_lines,
            logTruncated: log_truncated,
            durationMs: duration_ms,
            createdAt: created_at,
            startedAt: started_at,
            finishedAt: finished_at,
            tenant: tenant)
    }
}
