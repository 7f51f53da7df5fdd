import Foundation
import KilnCore

public struct ConfigError: Error, CustomStringConvertible {
    public var description: String
}

/// Server settings from `KILN_*` variables, each overridable by its flag.
public struct ServerConfig: Sendable {
    public var host: String
    public var port: Int
    public var db: String
    /// `KILN_ROLE`, `KILN_NODE_NAME`, `KILN_NODE_LEASE_S`: this node's part in a cluster
    /// (they matter only with a `postgres://` `db`).
    public var role: String
    public var nodeName: String
    public var nodeLeaseS: Int
    public var maxConcurrent: Int
    /// `KILN_TENANT_MAX_CONCURRENT`; nil: every slot.
    public var tenantMaxConcurrent: Int?
    public var queueLimit: Int
    public var maxBodyBytes: Int
    public var defaultTimeoutS: Int
    public var maxTimeoutS: Int
    public var heartbeatS: Int
    /// Caps on what a workload's `resources` may ask for (`KILN_MAX_MEM_MB`, `KILN_MAX_CPUS`,
    /// `KILN_MAX_PIDS`, `KILN_MAX_DISK_MB`).
    public var maxMemMB: Int
    public var maxCPUs: Int
    public var maxPids: Int
    public var maxDiskMB: Int
    /// `KILN_SANDBOX_UIDS`: the host uids sandbox workloads run as, one per running workload.
    public var sandboxUIDs: ClosedRange<Int>
    /// `KILN_MAX_LOG_BYTES`.
    public var maxLogBytes: Int
    /// `KILN_RETENTION` in seconds; nil keeps every workload.
    public var retentionS: Int?
    /// `KILN_REQUEST_TIMEOUT_S`: the slow-client deadline (HTTPServer.Options.requestTimeoutSeconds).
    public var requestTimeoutS: Int
    public var corsOrigins: [String]?
    public var logLevel: String
    /// `KILN_TOKENS_FILE`: further tokens, by SHA-256 digest.
    public var tokensFile: String?
    /// `KILN_ISOLATION`: the backends that may run workloads.
    public var isolation: Set<Isolation>
    /// The tokens this server accepts, read from `KILN_API_TOKEN` and `tokensFile` at start
    /// (digests only: the token itself is not kept).
    public var tokens: TokenSet

    /// Every variable Kiln reads, with its default (`Settings.all`).
    public static var variables: [(name: String, defaultValue: String)] { Settings.all.map { ($0.name, $0.defaultValue) } }

    /// `flags` maps variable names to flag values (nil: flag not given); a flag wins. Any
    /// variable may instead be given as `NAME_FILE`, the path of a file holding its value
    /// (Docker and Kubernetes secrets); one trailing newline is dropped.
    public static func resolve(flags: [String: String?], environment: [String: String]) throws -> ServerConfig {
        func flagName(_ name: String) -> String { Settings.named(name).flag }
        var fromFiles: [String: String] = [:]
        for (name, _) in variables {
            guard let path = environment[name + "_FILE"] else { continue }
            if environment[name] != nil {
                throw ConfigError(description: "both \(name) and \(name)_FILE are set; set only one")
            }
            guard let data = FileManager.default.contents(atPath: path), var text = String(data: data, encoding: .utf8) else {
                throw ConfigError(description: "invalid \(name)_FILE: cannot read \(path) as UTF-8 text")
            }
            if text.hasSuffix("\r\n") { text.removeLast(1) } else if text.hasSuffix("\n") { text.removeLast() }
            fromFiles[name] = text
        }
        func value(_ name: String) -> String {
            if let f = flags[name], let f { return f }
            if let e = environment[name] ?? fromFiles[name] { return e }
            return Settings.named(name).defaultValue
        }
        func int(_ name: String, min: Int, max: Int = Int.max) throws -> Int {
            let raw = value(name).trimmingCharacters(in: .whitespaces)
            guard let n = Int(raw), n >= min, n <= max else {
                throw ConfigError(description: "invalid \(name) (\(flagName(name))): \"\(raw)\" is not a whole number from \(min)\(max == Int.max ? " up" : " to \(max)")")
            }
            return n
        }

        let listen = value("KILN_LISTEN")
        let (host, port) = try parseListen(listen)
        let db = value("KILN_DB")
        guard !db.isEmpty else { throw ConfigError(description: "invalid KILN_DB (--db): empty path") }
        let token = value("KILN_API_TOKEN")
        let role = value("KILN_ROLE").trimmingCharacters(in: .whitespaces).lowercased()
        guard ["all", "api", "worker"].contains(role) else {
            throw ConfigError(description: "invalid KILN_ROLE (--role): \"\(role)\" is not one of all, api, worker")
        }
        let clustered = db.hasPrefix("postgres://") || db.hasPrefix("postgresql://")
        if role != "all" && !clustered {
            throw ConfigError(description: "invalid KILN_ROLE (--role): \(role) needs a cluster database (KILN_DB=postgres://…); a single server is all")
        }
        var nodeName = value("KILN_NODE_NAME").trimmingCharacters(in: .whitespaces)
        if nodeName.isEmpty { nodeName = ProcessInfo.processInfo.hostName }
        guard (1...63).contains(nodeName.utf8.count),
              nodeName.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2e || $0 == 0x2d || $0 == 0x5f }) else {
            throw ConfigError(description: "invalid KILN_NODE_NAME (--node-name): \"\(nodeName)\" is not 1 to 63 of letters, digits, '.', '_' and '-'")
        }
        // 30 days: far beyond any workload, and inside every timer the backends use.
        let maxTimeout = try int("KILN_MAX_TIMEOUT_S", min: 1, max: 2_592_000)
        let defaultTimeout = try int("KILN_DEFAULT_TIMEOUT_S", min: 1, max: 2_592_000)
        guard defaultTimeout <= maxTimeout else {
            throw ConfigError(description: "invalid KILN_DEFAULT_TIMEOUT_S (--default-timeout-s): \(defaultTimeout) is above KILN_MAX_TIMEOUT_S (\(maxTimeout))")
        }
        let cors = value("KILN_CORS_ORIGINS").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let level = value("KILN_LOG_LEVEL").lowercased()
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) else {
            throw ConfigError(description: "invalid KILN_LOG_LEVEL (--log-level): \"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        var isolation = Set<Isolation>()
        for piece in value("KILN_ISOLATION").split(separator: ",") {
            let name = piece.trimmingCharacters(in: .whitespaces)
            guard let i = Isolation(rawValue: name), i != .auto else {
                throw ConfigError(description: "invalid KILN_ISOLATION (--isolation): \"\(name)\" is not one of process, sandbox, gvisor, isolate")
            }
            isolation.insert(i)
        }
        guard !isolation.isEmpty else {
            throw ConfigError(description: "invalid KILN_ISOLATION (--isolation): empty; name at least one of process, sandbox, gvisor, isolate")
        }
        let allowText = value("KILN_ALLOW_UNAUTHENTICATED").trimmingCharacters(in: .whitespaces).lowercased()
        guard ["0", "1", "true", "false", ""].contains(allowText) else {
            throw ConfigError(description: "invalid KILN_ALLOW_UNAUTHENTICATED (--allow-unauthenticated): \"\(allowText)\" is not 0 or 1")
        }
        let allowUnauthenticated = allowText == "1" || allowText == "true"
        let tokensFile = value("KILN_TOKENS_FILE")
        let tokens = try TokenSet(apiToken: token.isEmpty ? nil : token, tokensFile: tokensFile.isEmpty ? nil : tokensFile)
        if !tokens.enabled, !allowUnauthenticated, !isLoopback(host) {
            throw ConfigError(description: "refusing to listen on \(listen) without a token: set KILN_API_TOKEN or KILN_TOKENS_FILE, listen on 127.0.0.1, or set KILN_ALLOW_UNAUTHENTICATED=1 to run open to the network")
        }
        return ServerConfig(
            host: host, port: port, db: db, role: role, nodeName: nodeName,
            nodeLeaseS: try int("KILN_NODE_LEASE_S", min: 2, max: 3600),
            maxConcurrent: try int("KILN_MAX_CONCURRENT", min: 1, max: 10_000),
            tenantMaxConcurrent: value("KILN_TENANT_MAX_CONCURRENT").trimmingCharacters(in: .whitespaces).isEmpty
                ? nil : try int("KILN_TENANT_MAX_CONCURRENT", min: 1, max: 10_000),
            queueLimit: try int("KILN_QUEUE_LIMIT", min: 0),
            maxBodyBytes: try int("KILN_MAX_BODY_BYTES", min: 1),
            defaultTimeoutS: defaultTimeout, maxTimeoutS: maxTimeout,
            heartbeatS: try int("KILN_HEARTBEAT_S", min: 1, max: 3600),
            maxMemMB: try int("KILN_MAX_MEM_MB", min: 16, max: 1 << 20),
            maxCPUs: try int("KILN_MAX_CPUS", min: 1, max: 1024),
            maxPids: try int("KILN_MAX_PIDS", min: 8, max: 1 << 22),
            maxDiskMB: try int("KILN_MAX_DISK_MB", min: 1, max: 1 << 24),
            sandboxUIDs: try uidRange(value("KILN_SANDBOX_UIDS")),
            maxLogBytes: try int("KILN_MAX_LOG_BYTES", min: 1024),
            retentionS: try retention(value("KILN_RETENTION")),
            requestTimeoutS: try int("KILN_REQUEST_TIMEOUT_S", min: 1, max: 3600),
            corsOrigins: cors.isEmpty ? nil : cors, logLevel: level,
            tokensFile: tokensFile.isEmpty ? nil : tokensFile, isolation: isolation,
            tokens: tokens)
    }

    /// `KILN_SANDBOX_UIDS`: `FIRST-LAST`, at least 16 uids, none of them below 1000 (system
    /// users) or at 65534 (nobody) and beyond, within 2^31.
    static func uidRange(_ text: String) throws -> ClosedRange<Int> {
        let raw = text.trimmingCharacters(in: .whitespaces)
        let parts = raw.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let first = Int(parts[0]), let last = Int(parts[1]), first >= 1000, last >= first + 15,
              last < 1 << 31, !(first...last).contains(65534) else {
            throw ConfigError(description: "invalid KILN_SANDBOX_UIDS (--sandbox-uids): \"\(raw)\" is not FIRST-LAST, at least 16 uids from 1000 up, without 65534 (200000-265535)")
        }
        return first...last
    }

    /// `KILN_RETENTION`: a whole number and a unit (s, m, h, d), up to 100 years; "" is unset.
    static func retention(_ text: String) throws -> Int? {
        let raw = text.trimmingCharacters(in: .whitespaces)
        if raw.isEmpty { return nil }
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let unit = raw.last.flatMap({ units[$0] }), let n = Int(raw.dropLast()), n >= 1, n <= 36_500 * 86_400 / unit else {
            throw ConfigError(description: "invalid KILN_RETENTION (--retention): \"\(raw)\" is not a whole number with s, m, h or d (30d, 12h, 90m, 45s)")
        }
        return n * unit
    }

    /// 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach.
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// `host:port`, `[v6]:port` or `:port`.
    static func parseListen(_ s: String) throws -> (String, Int) {
        let bad = ConfigError(description: "invalid KILN_LISTEN (--listen): \"\(s)\" is not host:port with a port from 0 to 65535")
        var host: Substring
        var portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { throw bad }
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { throw bad }
            portText = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { throw bad }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
            if host.contains(":") { throw bad }
        }
        if host.isEmpty { host = "0.0.0.0" }
        guard let port = Int(portText), (0...65535).contains(port) else { throw bad }
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == ":" }) else { throw bad }
        return (String(host), port)
    }
}
