/// The life of a workload: `pending → running → completed | failed | killed`,
/// and `pending → killed | failed`.
public enum WorkloadStatus: String, Sendable, CaseIterable, Codable {
    case pending, running, completed, failed, killed

    public var isTerminal: Bool {
        switch self {
        case .pending, .running: return false
        case .completed, .failed, .killed: return true
        }
    }

    /// Whether the state machine allows moving from `self` to `next`.
    public func canMove(to next: WorkloadStatus) -> Bool {
        switch (self, next) {
        case (.pending, .running), (.pending, .killed), (.pending, .failed): return true
        case (.running, .completed), (.running, .failed), (.running, .killed): return true
        default: return false
        }
    }
}

public enum Runtime: String, Sendable, CaseIterable, Codable {
    case python, node, shell
}

public enum Isolation: String, Sendable, CaseIterable, Codable {
    case auto, process, sandbox, gvisor, isolate

    /// The backends a server allows when `KILN_ISOLATION` is unset: every one except
    /// `process`, which runs code with the server's own rights.
    public static let allowedByDefault: Set<Isolation> = [.sandbox, .gvisor, .isolate]
}

public struct Resources: Sendable, Equatable, Codable {
    public var cpus: Int
    public var memMB: Int
    public var timeoutS: Int
    /// Processes and threads of the workload together (its cgroup's `pids.max`).
    public var pids: Int
    /// What the workload may write, its work folder and `/tmp` together (a tmpfs of this size).
    public var diskMB: Int

    public static let defaultPids = 256
    public static let defaultDiskMB = 256

    public init(cpus: Int, memMB: Int, timeoutS: Int, pids: Int = Resources.defaultPids, diskMB: Int = Resources.defaultDiskMB) {
        self.cpus = cpus
        self.memMB = memMB
        self.timeoutS = timeoutS
        self.pids = pids
        self.diskMB = diskMB
    }
}

public enum LogStream: String, Sendable, Codable {
    case stdout, stderr
}

/// One stored log line.
public struct LogLine: Sendable, Equatable {
    public var seq: Int64
    public var stream: LogStream
    /// Milliseconds since the epoch.
    public var ts: Int64
    public var line: String

    public init(seq: Int64, stream: LogStream, ts: Int64, line: String) {
        self.seq = seq
        self.stream = stream
        self.ts = ts
        self.line = line
    }

    public var json: JSON {
        .object([("seq", .int(seq)), ("stream", .string(stream.rawValue)), ("ts", .string(Millis.rfc3339(ts))), ("line", .string(line))])
    }

    /// The line read back from its JSON (`json`), for the CLI; nil without a seq or a line.
    /// (The CLI's own decoder set `ts` to 0, so `kiln logs --json` printed no time.)
    public init?(json: JSON) {
        guard let seq = json["seq"]?.int64Value, let line = json["line"]?.stringValue else { return nil }
        self.init(seq: seq, stream: json["stream"]?.stringValue == "stderr" ? .stderr : .stdout,
                  ts: json["ts"]?.stringValue.flatMap(Millis.parse) ?? 0, line: line)
    }
}

/// A workload record, as stored and as every endpoint returns it.
public struct WorkloadRecord: Sendable, Equatable {
    public var id: String
    public var status: WorkloadStatus
    public var runtime: Runtime
    public var isolation: Isolation
    public var isolationUsed: Isolation?
    public var exitCode: Int?
    /// JSON text of the output value (`null` when there is none).
    public var outputJSON: String
    public var outputTruncated: Bool
    public var error: String?
    public var resources: Resources
    public var logLines: Int64
    /// The log reached `KILN_MAX_LOG_BYTES`: its last line is Kiln's marker, and later output was discarded.
    public var logTruncated: Bool
    public var durationMs: Int64?
    public var createdAt: Int64
    public var startedAt: Int64?
    public var finishedAt: Int64?
    /// The tenant of the token that submitted it (`default` without tokens).
    public var tenant: String

    public init(id: String, status: WorkloadStatus, runtime: Runtime, isolation: Isolation,
                isolationUsed: Isolation? = nil, exitCode: Int? = nil, outputJSON: String = "null",
                outputTruncated: Bool = false, error: String? = nil, resources: Resources,
                logLines: Int64 = 0, logTruncated: Bool = false, durationMs: Int64? = nil, createdAt: Int64,
                startedAt: Int64? = nil, finishedAt: Int64? = nil, tenant: String = "default") {
        self.id = id
        self.status = status
        self.runtime = runtime
        self.isolation = isolation
        self.isolationUsed = isolationUsed
        self.exitCode = exitCode
        self.outputJSON = outputJSON
        self.outputTruncated = outputTruncated
        self.error = error
        self.resources = resources
        self.logLines = logLines
        self.logTruncated = logTruncated
        self.durationMs = durationMs
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.tenant = tenant
    }

    public var json: JSON {
        .object([
            ("id", .string(id)),
            ("tenant", .string(tenant)),
            ("status", .string(status.rawValue)),
            ("runtime", .string(runtime.rawValue)),
            ("isolation", .string(isolation.rawValue)),
            ("isolation_used", isolationUsed.map { .string($0.rawValue) } ?? .null),
            ("exit_code", exitCode.map { .int(Int64($0)) } ?? .null),
            ("output", .raw(outputJSON)),
            ("output_truncated", .bool(outputTruncated)),
            ("error", error.map { .string($0) } ?? .null),
            ("resources", .object([("cpus", .int(Int64(resources.cpus))), ("mem_mb", .int(Int64(resources.memMB))), ("timeout_s", .int(Int64(resources.timeoutS))),
                                       ("pids", .int(Int64(resources.pids))), ("disk_mb", .int(Int64(resources.diskMB)))])),
            ("log_lines", .int(logLines)),
            ("log_truncated", .bool(logTruncated)),
            ("duration_ms", durationMs.map { .int($0) } ?? .null),
            ("created_at", Millis.json(createdAt)),
            ("started_at", Millis.json(startedAt)),
            ("finished_at", Millis.json(finishedAt)),
        ])
    }
}

extension WorkloadRecord {
    /// The record read back from its JSON (`json`): the mapping both ways lives here, for
    /// the server and the CLI alike.
    public init(json: JSON) throws(JSONMappingError) {
        guard let id = json["id"]?.stringValue else { throw JSONMappingError("a workload record without an id") }
        guard let status = json["status"]?.stringValue.flatMap(WorkloadStatus.init(rawValue:)) else {
            throw JSONMappingError("workload \(id): no valid status")
        }
        guard let created = json["created_at"]?.stringValue.flatMap(Millis.parse) else {
            throw JSONMappingError("workload \(id): no valid created_at")
        }
        let r = json["resources"]
        func time(_ key: String) -> Int64? { json[key]?.stringValue.flatMap(Millis.parse) }
        self.init(id: id, status: status,
                  runtime: json["runtime"]?.stringValue.flatMap(Runtime.init(rawValue:)) ?? .shell,
                  isolation: json["isolation"]?.stringValue.flatMap(Isolation.init(rawValue:)) ?? .auto,
                  isolationUsed: json["isolation_used"]?.stringValue.flatMap(Isolation.init(rawValue:)),
                  exitCode: json["exit_code"]?.int64Value.map { Int($0) },
                  outputJSON: json["output"]?.text ?? "null",
                  outputTruncated: json["output_truncated"]?.boolValue ?? false,
                  error: json["error"]?.stringValue,
                  resources: Resources(cpus: Int(r?["cpus"]?.int64Value ?? 1), memMB: Int(r?["mem_mb"]?.int64Value ?? 0),
                                       timeoutS: Int(r?["timeout_s"]?.int64Value ?? 0),
                                       pids: Int(r?["pids"]?.int64Value ?? Int64(Resources.defaultPids)),
                                       diskMB: Int(r?["disk_mb"]?.int64Value ?? Int64(Resources.defaultDiskMB))),
                  logLines: json["log_lines"]?.int64Value ?? 0,
                  logTruncated: json["log_truncated"]?.boolValue ?? false,
                  durationMs: json["duration_ms"]?.int64Value,
                  createdAt: created, startedAt: time("started_at"), finishedAt: time("finished_at"),
                  tenant: json["tenant"]?.stringValue ?? "default")
    }
}

/// A JSON document that does not map onto a model.
public struct JSONMappingError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a finished workload's stream reports in its `end` event.
public struct EndInfo: Sendable, Equatable {
    public var status: WorkloadStatus
    public var exitCode: Int?
    public var error: String?
    public var logLines: Int64

    public init(status: WorkloadStatus, exitCode: Int?, error: String?, logLines: Int64) {
        self.status = status
        self.exitCode = exitCode
        self.error = error
        self.logLines = logLines
    }

    public init(record: WorkloadRecord) {
        self.init(status: record.status, exitCode: record.exitCode, error: record.error, logLines: record.logLines)
    }

    public var json: JSON {
        .object([("status", .string(status.rawValue)), ("exit_code", exitCode.map { .int(Int64($0)) } ?? .null),
                 ("error", error.map { .string($0) } ?? .null), ("log_lines", .int(logLines))])
    }

    /// `json` read back (an unknown status reads as `failed`).
    public init(json: JSON) {
        self.init(status: WorkloadStatus(rawValue: json["status"]?.stringValue ?? "") ?? .failed,
                  exitCode: json["exit_code"]?.int64Value.map { Int($0) }, error: json["error"]?.stringValue,
                  logLines: json["log_lines"]?.int64Value ?? 0)
    }
}
