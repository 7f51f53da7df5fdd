import Foundation

/// One `KILN_*` setting: the variable, its `kiln serve` flag, its default, and what it
/// means. `Settings.all` is the one table: `ServerConfig` reads its defaults from it,
/// `kiln serve --help` its help, and a test keeps the README's configuration table equal
/// to it row for row.
public struct Setting: Sendable {
    public let name: String
    /// The value when neither the flag nor the variable is given ("" = unset).
    public let defaultValue: String
    /// The default as the README shows it.
    public let shownDefault: String
    /// The README's description (Markdown).
    public let meaning: String

    /// `KILN_MAX_CONCURRENT` → `--max-concurrent`.
    public var flag: String { "--" + name.dropFirst(5).lowercased().replacingOccurrences(of: "_", with: "-") }

    /// The meaning as plain text, for `--help`.
    public var help: String {
        var text = meaning.replacingOccurrences(of: "`", with: "")
        while let open = text.range(of: "]("), let close = text[open.upperBound...].firstIndex(of: ")"),
              let start = text[..<open.lowerBound].lastIndex(of: "[") {
            let label = text[text.index(after: start)..<open.lowerBound]
            text.replaceSubrange(start...close, with: label)
        }
        return "\(text) (\(name))"
    }
}

public enum Settings {
    public static let all: [Setting] = [
        Setting(name: "KILN_LISTEN", defaultValue: "127.0.0.1:8080", shownDefault: "`127.0.0.1:8080`",
                meaning: "address:port to bind; port 0 picks a free one and prints it"),
        Setting(name: "KILN_DB", defaultValue: "./kiln-data/kiln.db", shownDefault: "`./kiln-data/kiln.db`",
                meaning: "SQLite file (folder created), `:memory:`, or `postgres://user:password@host:port/database` for [cluster mode](#cluster-mode)"),
        Setting(name: "KILN_ROLE", defaultValue: "all", shownDefault: "`all`",
                meaning: "cluster mode: `api` answers the API and runs nothing, `worker` runs workloads (and answers the API), `all` does both"),
        Setting(name: "KILN_NODE_NAME", defaultValue: "", shownDefault: "the host name",
                meaning: "cluster mode: this node's name in `GET /v1/nodes`, unique in the cluster"),
        Setting(name: "KILN_NODE_LEASE_S", defaultValue: "10", shownDefault: "10",
                meaning: "cluster mode: a node whose lease (renewed every 2 s) is older than this is lost, and its running workloads fail with `node lost`"),
        Setting(name: "KILN_API_TOKEN", defaultValue: "", shownDefault: "unset",
                meaning: "a bearer token, admin of tenant `default`"),
        Setting(name: "KILN_TOKENS_FILE", defaultValue: "", shownDefault: "unset",
                meaning: "JSON file of further tokens by SHA-256 digest, each with a tenant, a role and an optional backend list ([Access control](#access-control))"),
        Setting(name: "KILN_ISOLATION", defaultValue: "sandbox,gvisor,isolate", shownDefault: "`sandbox,gvisor,isolate`",
                meaning: "backends that may run workloads; `process` (no isolation) only when listed"),
        Setting(name: "KILN_ALLOW_UNAUTHENTICATED", defaultValue: "0", shownDefault: "`0`",
                meaning: "`1`: listen beyond loopback without any token"),
        Setting(name: "KILN_MAX_CONCURRENT", defaultValue: String(2 * ProcessInfo.processInfo.activeProcessorCount), shownDefault: "2 × cores",
                meaning: "workloads executing at once; the rest wait as `pending`"),
        Setting(name: "KILN_TENANT_MAX_CONCURRENT", defaultValue: "", shownDefault: "every slot",
                meaning: "workloads of one tenant executing at once; the rest wait as `pending`, and a free slot goes to the tenant with the fewest running"),
        Setting(name: "KILN_QUEUE_LIMIT", defaultValue: "1000", shownDefault: "1000",
                meaning: "pending workloads allowed; past it, 429"),
        Setting(name: "KILN_MAX_BODY_BYTES", defaultValue: "10485760", shownDefault: "10485760",
                meaning: "larger request bodies get 413"),
        Setting(name: "KILN_DEFAULT_TIMEOUT_S", defaultValue: "30", shownDefault: "30",
                meaning: "a workload's wall-clock timeout when it names none"),
        Setting(name: "KILN_MAX_TIMEOUT_S", defaultValue: "3600", shownDefault: "3600",
                meaning: "the largest timeout a workload may ask for"),
        Setting(name: "KILN_MAX_MEM_MB", defaultValue: "4096", shownDefault: "4096",
                meaning: "the largest `resources.mem_mb` a workload may ask for"),
        Setting(name: "KILN_MAX_CPUS", defaultValue: String(ProcessInfo.processInfo.activeProcessorCount), shownDefault: "cores",
                meaning: "the largest `resources.cpus` a workload may ask for"),
        Setting(name: "KILN_MAX_PIDS", defaultValue: "4096", shownDefault: "4096",
                meaning: "the largest `resources.pids` a workload may ask for"),
        Setting(name: "KILN_MAX_DISK_MB", defaultValue: "8192", shownDefault: "8192",
                meaning: "the largest `resources.disk_mb` a workload may ask for"),
        Setting(name: "KILN_SANDBOX_UIDS", defaultValue: "200000-265535", shownDefault: "`200000-265535`",
                meaning: "host uids for `sandbox` workloads, each running workload its own"),
        Setting(name: "KILN_RETENTION", defaultValue: "", shownDefault: "unset",
                meaning: "finished workloads older than this (`30d`, `12h`, `90m`, `45s`) are deleted with their logs; unset keeps them"),
        Setting(name: "KILN_MAX_LOG_BYTES", defaultValue: "67108864", shownDefault: "67108864",
                meaning: "log text one workload may store; past it, a marker line and `log_truncated`"),
        Setting(name: "KILN_HEARTBEAT_S", defaultValue: "15", shownDefault: "15",
                meaning: "SSE keep-alive interval"),
        Setting(name: "KILN_REQUEST_TIMEOUT_S", defaultValue: "30", shownDefault: "30",
                meaning: "a request's head must arrive within this, and an idle keep-alive connection closes after it"),
        Setting(name: "KILN_CORS_ORIGINS", defaultValue: "", shownDefault: "unset",
                meaning: "comma-separated origins allowed by CORS, or `*`"),
        Setting(name: "KILN_LOG_LEVEL", defaultValue: "info", shownDefault: "`info`",
                meaning: "the server's own log level (stderr)"),
    ]

    public static func named(_ name: String) -> Setting {
        guard let s = all.first(where: { $0.name == name }) else { preconditionFailure("no setting \(name)") }
        return s
    }
}
