import Foundation
import KilnCore
import KilnLogs
import KilnProcess

/// Finds runtime executables in the minimal PATH workloads get.
public enum RuntimeLocator {
    public static let minimalPath = "/usr/local/bin:/usr/bin:/bin"

    public static func find(_ name: String) -> String? {
        for dir in minimalPath.split(separator: ":") {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    public static func executables() -> [Runtime: String] {
        var out: [Runtime: String] = [:]
        if let p = find("python3") { out[.python] = p }
        if let p = find("node") { out[.node] = p }
        if let p = find("sh") { out[.shell] = p }
        return out
    }
}

/// Runs a workload as a plain child process: its own process group (and PID namespace
/// where the kernel allows, so grandchildren die with it), rlimits, a fresh work folder,
/// and an environment holding only what the request gave plus PATH and HOME.
public struct ProcessBackend: Backend {
    public let name: Isolation = .process
    let workRoot: String
    let executables: [Runtime: String]
    let usePIDNamespace: Bool

    public init(workRoot: String, executables: [Runtime: String] = RuntimeLocator.executables(),
                usePIDNamespace: Bool = ChildProcess.pidNamespacesWork) {
        self.workRoot = workRoot
        self.executables = executables
        self.usePIDNamespace = usePIDNamespace
    }

    public func capabilities() -> BackendCapabilities {
        let runtimes = Runtime.allCases.filter { executables[$0] != nil }
        return BackendCapabilities(
            name: .process,
            available: !runtimes.isEmpty,
            reason: runtimes.isEmpty ? "no python3, node or sh in \(RuntimeLocator.minimalPath)" : nil,
            runtimes: runtimes,
            isolation: "none",
            limits: ProcessLaunch.limitsReport() + [
                ("process_tree", .string(usePIDNamespace ? "PID namespace per workload" : "process group")),
                ("disk", .string(WorkFolder.diskReport(sandboxed: false))),
            ],
            network: "host",
            filesystem: "host (work folder is the current directory)")
    }

    public func execute(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        guard let exe = executables[spec.runtime] else {
            return ExecutionResult(exitCode: nil, error: "runtime \(spec.runtime.rawValue) is not installed")
        }
        let folder: WorkFolder
        do {
            folder = try WorkFolder(root: workRoot, id: spec.id, diskMB: spec.resources.diskMB, owner: getuid(), withTmp: false)
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot prepare work folder: \(error)")
        }
        defer { folder.remove() }
        let launch: ProcessLaunch.Prepared
        do {
            launch = try ProcessLaunch.prepare(spec, in: folder.path)
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot start workload: \(error)")
        }
        // The PID namespace's init is the one process of Kiln's in the cgroup.
        return ProcessLaunch.runLimited(spec, writer: writer, cancellation: cancellation, what: "workload",
                                        helpers: ProcessLaunch.firstProcessHelpers(pidNamespace: usePIDNamespace)) { cgroup in
            try ChildProcess.spawn(SpawnSpec(
                executable: exe, arguments: launch.arguments,
                environment: Dictionary(uniqueKeysWithValues: ProcessLaunch.environment(spec, home: folder.path)),
                workingDirectory: folder.path, stdinPath: launch.stdinPath,
                memoryLimitBytes: launch.memoryLimitBytes(spec), cpuLimitSeconds: ProcessLaunch.cpuSeconds(spec),
                usePIDNamespace: usePIDNamespace, cgroup: cgroup))
        }
    }
}

/// The shared part of launching a runtime in a work folder and driving it.
enum ProcessLaunch {
    struct Prepared {
        var arguments: [String]
        var stdinPath: String
        /// Whether RLIMIT_AS applies (V8 reserves more address space than any sane limit).
        var rlimitMemory: Bool

        /// RLIMIT_AS for this runtime, or nil where it does not apply.
        func memoryLimitBytes(_ spec: ExecutionSpec) -> Int? {
            rlimitMemory ? spec.resources.memMB << 20 : nil
        }
    }

    /// RLIMIT_CPU: the wall-clock timeout times the cpus asked for, plus a second.
    static func cpuSeconds(_ spec: ExecutionSpec) -> Int {
        spec.resources.timeoutS * max(1, spec.resources.cpus) + 1
    }

    /// Only what the request gives, plus a minimal PATH (unless given) and HOME; sorted.
    static func environment(_ spec: ExecutionSpec, home: String) -> [(String, String)] {
        var env = spec.env
        env["PATH"] = env["PATH"] ?? RuntimeLocator.minimalPath
        env["HOME"] = home
        return env.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Writes the code and input into `folder`; returns argv (paths relative to the folder).
    static func prepare(_ spec: ExecutionSpec, in folder: String) throws -> Prepared {
        let input = "\(folder)/input.json"
        try WorkFile.write(Array(spec.inputJSON.utf8), to: input)
        switch spec.runtime {
        case .python:
            try WorkFile.write(Array(spec.code.utf8), to: "\(folder)/main.py")
            return Prepared(arguments: ["python3", "-u", "main.py"], stdinPath: input, rlimitMemory: true)
        case .node:
            try WorkFile.write(Array(spec.code.utf8), to: "\(folder)/main.js")
            return Prepared(arguments: ["node", "--max-old-space-size=\(spec.resources.memMB)", "main.js"],
                            stdinPath: input, rlimitMemory: false)
        case .shell:
            try WorkFile.write(Array(spec.code.utf8), to: "\(folder)/main.sh")
            return Prepared(arguments: ["sh", "main.sh"], stdinPath: input, rlimitMemory: true)
        }
    }

    /// What `/v1/backends` says the process and sandbox backends enforce here, and how.
    static func limitsReport() -> [(String, JSON)] {
        let support = CgroupSupport.detected
        let rlimits = "RLIMIT_AS for python and shell; V8 --max-old-space-size for node"
        guard support.available else {
            return [
                ("timeout", .bool(true)),
                ("cgroup", .string(support.summary)),
                ("memory", .string("per process only: \(rlimits)")),
                ("pids", .string("not enforced (no cgroup)")),
                ("cpu", .string("RLIMIT_CPU (cpu seconds = timeout_s × cpus) per process")),
            ]
        }
        return [
            ("timeout", .bool(true)),
            ("cgroup", .string(support.summary)),
            ("first_process", .string(KilnInit.summary)),
            ("memory", .string("mem_mb for the whole workload, tmpfs files included (its cgroup); also \(rlimits) per process")),
            ("pids", .string("pids, every process and thread of the workload (its cgroup; Kiln's own helper processes, at most \(helperPids), are not counted)")),
            ("cpu", .string("cpus as a CPU bandwidth limit (its cgroup); RLIMIT_CPU = timeout_s × cpus")),
        ]
    }

    /// The most processes of Kiln's own that a workload's cgroup also holds, on top of the
    /// workload's `pids`: kiln-init or the PID namespace's init (process), and bubblewrap
    /// and the init of its PID namespace (sandbox).
    static let helperPids = 3

    /// Kiln's own first process, counted in the cgroup: kiln-init (which joins it on v1,
    /// and stays outside on v2, where it clones the workload into it), or the fork of the
    /// server that is the PID namespace's init.
    static func firstProcessHelpers(pidNamespace: Bool) -> Int {
        KilnInit.path != nil || pidNamespace ? 1 : 0
    }

    /// What the workload's cgroup allows: `helpers` is how many of its processes are Kiln's.
    static func limits(_ spec: ExecutionSpec, helpers: Int) -> CgroupLimits {
        CgroupLimits(memoryBytes: Int64(spec.resources.memMB) << 20, pids: spec.resources.pids + helpers,
                     cpus: spec.resources.cpus)
    }

    /// Makes the workload's cgroup (where the host has cgroups), starts the workload in
    /// it through `spawn`, drives it to its end, then kills whatever of it is left and
    /// removes the cgroup. A workload is never started without the cgroup it should have.
    static func runLimited(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation, what: String,
                           helpers: Int, spawn: (WorkloadCgroup?) throws -> ChildProcess) -> ExecutionResult {
        let cgroup: WorkloadCgroup?
        do {
            cgroup = try WorkloadCgroup.create(id: spec.id, limits: limits(spec, helpers: helpers))
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot create the workload's cgroup: \(error)")
        }
        defer {
            cgroup?.killAll()
            cgroup?.remove()
        }
        let child: ChildProcess
        do {
            child = try spawn(cgroup)
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot start \(what): \(error)")
        }
        var result = drive(child, spec: spec, writer: writer, cancellation: cancellation)
        if let cgroup, !result.timedOut, !result.cancelled, result.exitCode != 0, cgroup.memoryExceeded {
            result.error = "memory limit of \(spec.resources.memMB) MB exceeded (killed by the workload's memory cgroup)"
        }
        return result
    }

    static func drive(_ child: ChildProcess, spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        cancellation.onCancel { child.stop() }
        let deadline = DispatchTime.now() + .seconds(spec.resources.timeoutS)
        var sniffer = MemoryErrorSniffer()
        let exit = child.drive(deadline: deadline, tickMillis: 25, onOutput: { stream, bytes in
            if stream == .stderr { sniffer.scan(bytes) }
            writer.write(stream == .stdout ? .stdout : .stderr, bytes)
        }, onTick: { writer.tick() })
        if exit.timedOut {
            return ExecutionResult(exitCode: Int(exit.status), timedOut: true,
                                   error: "timed out after \(spec.resources.timeoutS) s")
        }
        if exit.status != 0, !exit.stopped, let what = sniffer.found {
            return ExecutionResult(exitCode: Int(exit.status),
                                   error: "memory limit of \(spec.resources.memMB) MB exceeded (\(what))")
        }
        return ExecutionResult(exitCode: Int(exit.status), cancelled: exit.stopped)
    }
}

/// Spots a runtime's out-of-memory report on stderr, so a workload that hit its memory
/// limit fails with an error that says so rather than a bare exit code.
struct MemoryErrorSniffer {
    static let markers = ["MemoryError", "JavaScript heap out of memory", "Cannot allocate memory", "cannot allocate memory"]
    private(set) var found: String?
    private var tail: [UInt8] = []

    mutating func scan(_ bytes: [UInt8]) {
        guard found == nil else { return }
        // Keep a little of the previous chunk so a marker split across reads is still seen.
        let window = tail + bytes.prefix(64 * 1024)
        let text = String(decoding: window, as: UTF8.self)
        found = MemoryErrorSniffer.markers.first { text.contains($0) }
        tail = Array(window.suffix(64))
    }
}
