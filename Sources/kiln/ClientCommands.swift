import ArgumentParser
import Foundation
import KilnCore
import KilnLogs

/// Options every client command shares.
struct ClientOptions: ParsableArguments {
    @Option(help: "the Kiln server (KILN_SERVER; default http://127.0.0.1:8080)") var server: String?
    @Option(help: "bearer token (KILN_API_TOKEN)") var token: String?
    @Flag(help: "print JSON instead of text") var json = false

    func client() throws -> KilnClient {
        let env = ProcessInfo.processInfo.environment
        return try KilnClient(server: server ?? env["KILN_SERVER"] ?? "http://127.0.0.1:8080",
                              token: token ?? env["KILN_API_TOKEN"])
    }
}

/// Runs a client command: a failure of the CLI or the server is one line on stderr and exit
/// code 125, as `docker run` does, so that it cannot be taken for a workload's own exit 1.
func clientMain(_ body: () throws -> Int32) -> Never {
    do {
        Foundation.exit(try body())
    } catch let e as ClientError {
        Terminal.error("kiln: \(e.description)")
        Foundation.exit(clientFailure)
    } catch {
        Terminal.error("kiln: \(error)")
        Foundation.exit(clientFailure)
    }
}

/// The exit code of a client command that failed itself (not its workload).
let clientFailure: Int32 = 125

enum Terminal {
    static let colour = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil

    static func out(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
    static func error(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

    static func status(_ s: String) -> String {
        guard colour else { return s }
        let code: String
        switch s {
        case "completed": code = "32"
        case "failed": code = "31"
        case "killed": code = "33"
        case "running": code = "36"
        default: code = "2"
        }
        return "\u{1B}[\(code)m\(s)\u{1B}[0m"
    }

    /// Columns padded to their widest cell (ANSI colour codes do not count).
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        func width(_ s: String) -> Int {
            // Visible characters: skip ESC [ … m colour sequences.
            var n = 0
            var inEscape = false
            for c in s {
                if inEscape { if c == "m" { inEscape = false } } else if c == "\u{1B}" { inEscape = true } else { n += 1 }
            }
            return n
        }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], width(cell)) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - width(c)) }
                .joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

/// One line as the API gives it, `ts` included.
func printJSONLine(_ l: LogLine) {
    Terminal.out(l.json.text)
}

func printLine(_ l: LogLine) {
    if l.stream == .stderr { Terminal.error(l.line) } else { Terminal.out(l.line) }
}

/// The output value as a person reads it: a string as is, anything else as JSON.
func showOutput(_ r: WorkloadRecord) -> String {
    if let v = try? JSON.parse(r.outputJSON), case .string(let s) = v {
        return s.hasSuffix("\n") ? String(s.dropLast()) : s
    }
    return r.outputJSON == "null" ? "" : r.outputJSON
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a workload; exit with its exit code.")

    @OptionGroup var options: ClientOptions
    @Option(help: "python, node or shell") var runtime: String
    @Option(help: "the code to run") var code: String?
    @Option(help: "a file holding the code") var file: String?
    @Option(help: "JSON input, given on stdin") var input: String?
    @Option(help: "auto, process, sandbox, gvisor or isolate") var isolation: String?
    @Option(help: "timeout in seconds") var timeout: Int?
    @Option(help: "memory limit in MB") var memory: Int?
    @Option(name: .customLong("env"), help: "KEY=VALUE for the workload (repeatable)") var env: [String] = []
    @Flag(name: .customLong("async"), help: "submit and print the id at once") var async = false
    @Flag(help: "stream the log lines while it runs, then the result") var follow = false

    func validate() throws {
        if (code == nil) == (file == nil) { throw ValidationError("give exactly one of --code or --file") }
        if async && follow { throw ValidationError("--async and --follow do not go together") }
    }

    func body() throws -> JSON {
        let source: String
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ClientError(description: "cannot read \(file)") }
            source = text
        } else {
            source = code ?? ""
        }
        var members: [(String, JSON)] = [("runtime", .string(runtime)), ("code", .string(source))]
        if let input {
            guard let v = try? JSON.parse(input) else { throw ClientError(description: "--input is not valid JSON") }
            members.append(("input", v))
        }
        if let isolation { members.append(("isolation", .string(isolation))) }
        var resources: [(String, JSON)] = []
        if let timeout { resources.append(("timeout_s", .int(Int64(timeout)))) }
        if let memory { resources.append(("mem_mb", .int(Int64(memory)))) }
        if !resources.isEmpty { members.append(("resources", .object(resources))) }
        if !env.isEmpty {
            var pairs: [(String, JSON)] = []
            for e in env {
                guard let eq = e.firstIndex(of: "=") else { throw ClientError(description: "--env takes KEY=VALUE, not \(e)") }
                pairs.append((String(e[..<eq]), .string(String(e[e.index(after: eq)...]))))
            }
            members.append(("env", .object(pairs)))
        }
        return .object(members)
    }

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let client = try options.client()
        let body = try body()
        if async {
            let accepted = try client.json("POST", "/v1/workloads/async", body: body)
            Terminal.out(options.json ? accepted.text : accepted["id"]?.stringValue ?? "")
            return 0
        }
        // Submitted asynchronously, then followed to its end, so that the id is known at
        // once and Ctrl-C can kill the workload (a synchronous POST gives the id only with
        // the answer).
        let interrupts = KillOnInterrupt(client: client)
        defer { withExtendedLifetime(interrupts) {} }
        let accepted = try client.json("POST", "/v1/workloads/async", body: body)
        guard let id = accepted["id"]?.stringValue else { throw ClientError(description: "no id in the answer") }
        interrupts.started(id)
        if follow && !options.json { Terminal.error("workload \(id)") }
        let asJSON: Bool = options.json
        let following = follow
        let end = try client.follow(id, after: 0, tail: nil, onLine: { l in
            // --follow: every line (as JSON with --json). Otherwise stdout is the output,
            // shown at the end, and stderr (a traceback, say) is shown as it comes, as
            // docker run shows both.
            if following { if asJSON { printJSONLine(l) } else { printLine(l) } }
            else if !asJSON, l.stream == .stderr { Terminal.error(l.line) }
        })
        let record = try client.json("GET", KilnClient.workloadPath(id))
        if options.json { Terminal.out(record.text) } else { report(try WorkloadRecord(json: record), showOutputToo: !follow) }
        return end.cliExitCode
    }

    func report(_ r: WorkloadRecord, showOutputToo: Bool) {
        if showOutputToo {
            let out = showOutput(r)
            if !out.isEmpty { Terminal.out(out) }
        }
        var summary = "\(r.id) \(Terminal.status(r.status.rawValue))"
        if let code = r.exitCode { summary += " exit \(code)" }
        if let d = r.durationMs { summary += " in \(d) ms" }
        if let e = r.error { summary += ": \(e)" }
        if r.status != .completed || !showOutputToo { Terminal.error(summary) }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a workload's record.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "workload id") var id: String

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let record = try options.client().json("GET", KilnClient.workloadPath(id))
        if options.json {
            Terminal.out(record.text)
            return 0
        }
        let r = try WorkloadRecord(json: record)
        var rows: [(String, String)] = [("id", r.id), ("status", Terminal.status(r.status.rawValue)), ("runtime", r.runtime.rawValue),
                                        ("isolation", "\(r.isolation.rawValue) → \(r.isolationUsed?.rawValue ?? "-")")]
        rows.append(("exit code", r.exitCode.map(String.init) ?? "-"))
        rows.append(("error", r.error ?? "-"))
        rows.append(("log lines", String(r.logLines)))
        rows.append(("duration", r.durationMs.map { "\($0) ms" } ?? "-"))
        rows.append(("created", record["created_at"]?.stringValue ?? "-"))
        rows.append(("output", showOutput(r) + (r.outputTruncated ? " (truncated)" : "")))
        for (k, v) in rows { Terminal.out("\(k.padding(toLength: 10, withPad: " ", startingAt: 0)) \(v)") }
        return 0
    }
}

struct LogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print a workload's log; -f follows it to its end.")
    @OptionGroup var options: ClientOptions
    @Flag(name: .shortAndLong, help: "follow the log live until the workload ends; exit with its exit code") var follow = false
    @Option(help: "start with the last N lines") var tail: Int?
    @Argument(help: "workload id") var id: String

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more, not \(tail)") }
    }

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let client = try options.client()
        let asJSON: Bool = options.json
        let emit: (LogLine) -> Void = { l in if asJSON { printJSONLine(l) } else { printLine(l) } }
        if follow {
            let end = try client.follow(id, after: nil, tail: tail, onLine: emit)
            return end.cliExitCode
        }
        let record = try client.record(id)
        var after = tail.map { max(0, record.logLines - Int64($0)) } ?? 0
        while true {
            let page = try client.json("GET", KilnClient.workloadPath(id) + "/logs/history?after=\(after)&limit=10000")
            let lines = page["lines"]?.arrayValue ?? []
            for l in lines { if let line = LogLine(json: l) { emit(line) } }
            guard let next = page["next_after"]?.int64Value, !lines.isEmpty else { break }
            after = next
        }
        return 0
    }
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List workloads, newest first.")
    @OptionGroup var options: ClientOptions
    @Option(help: "how many (1–500)") var limit: Int = 50
    @Option(help: "only this status") var status: String?
    @Option(help: "only this runtime") var runtime: String?
    @Option(help: "only this backend (isolation used)") var isolation: String?

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        var query = "limit=\(limit)"
        for (k, v) in [("status", status), ("runtime", runtime), ("isolation", isolation)] {
            if let v { query += "&\(k)=\(v.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? v)" }
        }
        let page = try options.client().json("GET", "/v1/workloads?\(query)")
        if options.json {
            Terminal.out(page.text)
            return 0
        }
        let rows = (page["workloads"]?.arrayValue ?? []).map { w -> [String] in
            [w["id"]?.stringValue ?? "", Terminal.status(w["status"]?.stringValue ?? ""), w["runtime"]?.stringValue ?? "",
             w["isolation_used"]?.stringValue ?? "-", w["exit_code"]?.int64Value.map(String.init) ?? "-",
             w["duration_ms"]?.int64Value.map { "\($0)ms" } ?? "-", w["created_at"]?.stringValue ?? ""]
        }
        Terminal.out(Terminal.table(["ID", "STATUS", "RUNTIME", "BACKEND", "EXIT", "DURATION", "CREATED"], rows))
        return 0
    }
}

struct KillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kill", abstract: "Kill a workload and its whole process tree.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "workload id") var id: String

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let record = try options.client().json("DELETE", KilnClient.workloadPath(id))
        Terminal.out(options.json ? record.text : "\(id) \(Terminal.status(record["status"]?.stringValue ?? ""))")
        return 0
    }
}

/// `kiln rm`: as `docker rm`, a workload that has not finished is refused unless `--force`,
/// which kills it first.
struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete a finished workload's record and log.")
    @OptionGroup var options: ClientOptions
    @Flag(name: [.short, .long], help: "kill a pending or running workload first") var force = false
    @Argument(help: "workload id") var id: String

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let client = try options.client()
        let path = KilnClient.workloadPath(id)
        if !force {
            let status = try client.json("GET", path)["status"]?.stringValue ?? ""
            guard WorkloadStatus(rawValue: status)?.isTerminal == true else {
                throw ClientError(description: "workload \(id) is \(status): kill it first, or use --force")
            }
        }
        let (status, data) = try client.send("DELETE", path + "?purge=true")
        guard status == 204 else { throw ClientError(description: KilnClient.describe(status: status, try? JSON.parse(data), data)) }
        Terminal.out(options.json ? JSON.object([("id", .string(id)), ("removed", .bool(true))]).text : id)
        return 0
    }
}

struct BackendsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "backends", abstract: "Show the isolation backends and what they enforce.")
    @OptionGroup var options: ClientOptions

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let value = try options.client().json("GET", "/v1/backends")
        if options.json {
            Terminal.out(value.text)
            return 0
        }
        let rows = (value["backends"]?.arrayValue ?? []).map { b -> [String] in
            [b["name"]?.stringValue ?? "", b["available"] == .bool(true) ? "yes" : "no",
             (b["runtimes"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: ","),
             b["isolation"]?.stringValue ?? "", b["network"]?.stringValue ?? "", b["reason"]?.stringValue ?? ""]
        }
        Terminal.out(Terminal.table(["NAME", "AVAILABLE", "RUNTIMES", "ISOLATION", "NETWORK", "REASON"], rows))
        return 0
    }
}

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Show workload counts and durations.")
    @OptionGroup var options: ClientOptions

    func run() throws {
        clientMain { try execute() }
    }

    func execute() throws -> Int32 {
        let s = try options.client().json("GET", "/v1/stats")
        if options.json {
            Terminal.out(s.text)
            return 0
        }
        let w = s["workloads"]
        let counts = ["total", "pending", "running", "completed", "failed", "killed"].map { "\($0) \(w?[$0]?.int64Value ?? 0)" }
        Terminal.out("workloads: " + counts.joined(separator: ", "))
        Terminal.out("log lines: \(s["log_lines_total"]?.int64Value ?? 0), live subscribers: \(s["sse_subscribers"]?.int64Value ?? 0)")
        if case .object(let backends)? = s["backends"], !backends.isEmpty {
            let rows = backends.map { name, b in
                [name, String(b["count"]?.int64Value ?? 0), b["avg_ms"]?.text ?? "", b["p50_ms"]?.text ?? "", b["p95_ms"]?.text ?? ""]
            }
            Terminal.out(Terminal.table(["BACKEND", "COUNT", "AVG MS", "P50 MS", "P95 MS"], rows))
        }
        return 0
    }
}
