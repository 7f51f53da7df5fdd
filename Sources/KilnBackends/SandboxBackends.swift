import Foundation
import KilnCore
import KilnLogs
import KilnProcess
import Logging

/// What the sandboxed backends share: a state folder with a minimal `/etc`, work folders
/// owned by the unprivileged uid the workload runs as (a tmpfs of `disk_mb`, with the
/// `/tmp` it binds inside), and the runtimes' command lines.
struct SandboxSupport: Sendable {
    static let nobody = 65534
    let stateRoot: String
    let workRoot: String
    let executables: [Runtime: String]

    var etcFolder: String { "\(stateRoot)/etc" }

    /// Writes the `/etc` every sandbox sees (nothing of the host's): users, groups, hosts.
    func prepareEtc() throws {
        try FileManager.default.createDirectory(atPath: etcFolder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: stateRoot)
        let files = [
            "passwd": "root:x:0:0:root:/work:/bin/sh\nnobody:x:65534:65534:nobody:/work:/bin/sh\n",
            "group": "root:x:0:\nnogroup:x:65534:\n",
            "hosts": "127.0.0.1 localhost kiln\n::1 localhost\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        ]
        for (name, text) in files {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(etcFolder)/\(name)"))
        }
    }

    /// The work folder with the code and input, owned by `owner`, the host uid the workload
    /// runs as (when Kiln is root).
    func prepareWork(_ spec: ExecutionSpec, owner: uid_t) throws -> (WorkFolder, ProcessLaunch.Prepared) {
        let folder = try WorkFolder(root: workRoot, id: spec.id, diskMB: spec.resources.diskMB, owner: owner, withTmp: true)
        do {
            return (folder, try ProcessLaunch.prepare(spec, in: folder.path))
        } catch {
            folder.remove()
            throw error
        }
    }

    struct Run {
        var folder: WorkFolder
        var prepared: ProcessLaunch.Prepared
        var command: [String]
    }

    struct Failure: Error {
        var result: ExecutionResult
    }

    /// The work folder, the prepared files and the command; or the result that says why not.
    func prepareRun(_ spec: ExecutionSpec, owner: uid_t) -> Result<Run, Failure> {
        let folder: WorkFolder
        let prepared: ProcessLaunch.Prepared
        do {
            (folder, prepared) = try prepareWork(spec, owner: owner)
        } catch {
            return .failure(Failure(result: ExecutionResult(exitCode: nil, error: "cannot prepare work folder: \(error)")))
        }
        guard let command = command(spec, prepared) else {
            folder.remove()
            return .failure(Failure(result: ExecutionResult(exitCode: nil, error: "runtime \(spec.runtime.rawValue) is not installed")))
        }
        return .success(Run(folder: folder, prepared: prepared, command: command))
    }

    /// The command inside the sandbox: absolute runtime path, then the runtime's arguments.
    func command(_ spec: ExecutionSpec, _ prepared: ProcessLaunch.Prepared) -> [String]? {
        guard let exe = executables[spec.runtime] else { return nil }
        return [exe] + prepared.arguments.dropFirst()
    }

    /// gVisor's pipes accept partial writes, and python's unbuffered (-u) raw stdout does not
    /// retry them: a large write would lose its tail. Inside gVisor python runs with
    /// line-buffered text streams over buffered writers, which retry, and so still sends
    /// every line as soon as it ends.
    static let pythonLineBuffered = """
        import io, runpy, sys
        def _stream(fd):
            return io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding="utf-8", \
        errors="backslashreplace", line_buffering=True)
        sys.stdout, sys.stderr = _stream(1), _stream(2)
        sys.argv = ["main.py"]
        runpy.run_path("main.py", run_name="__main__")
        """


    /// Runs a trivial shell workload through `backend`; nil when it worked, else why not.
    static func probe(_ backend: any Backend) -> String? {
        let spec = ExecutionSpec(id: "probe-\(UUID().uuidString.prefix(12))", runtime: .shell, code: "echo ok",
                                 inputJSON: "null", env: [:], resources: Resources(cpus: 1, memMB: 64, timeoutS: 20))
        let writer = CollectingWriter()
        let r = backend.execute(spec, writer: writer, cancellation: Cancellation())
        if r.exitCode == 0, writer.lines == ["ok"] { return nil }
        let detail = (writer.lines.last ?? r.error ?? "no output").prefix(200)
        return "a trivial workload failed (exit \(r.exitCode.map(String.init) ?? "none")): \(detail)"
    }
}

/// `sandbox`: bubblewrap. New user, pid, net, ipc, uts, cgroup and mount namespaces; read-only
/// `/usr`, a private `/etc`, `/tmp` and `/dev`, the work folder as the only writable place.
/// As root it starts as a host uid of its own from `identities` (bubblewrap run as root
/// keeps host root inside), which is nobody (65534) inside the sandbox.
public struct SandboxBackend: Backend {
    public let name: Isolation = .sandbox
    let support: SandboxSupport
    let bwrap: String?
    let setpriv: String?
    let identities: SandboxIdentities

    public init(stateRoot: String, workRoot: String, identities: SandboxIdentities = SandboxIdentities(),
                executables: [Runtime: String] = RuntimeLocator.executables()) {
        self.identities = identities
        support = SandboxSupport(stateRoot: stateRoot, workRoot: workRoot, executables: executables)
        bwrap = RuntimeLocator.find("bwrap")
        setpriv = RuntimeLocator.find("setpriv")
        try? support.prepareEtc()
    }

    public func capabilities() -> BackendCapabilities {
        var reason: String? = nil
        if bwrap == nil { reason = "bubblewrap (bwrap) is not installed" }
        else if getuid() == 0 && setpriv == nil { reason = "setpriv is missing: bubblewrap must not run as root" }
        else { reason = SandboxSupport.probe(self) }
        return BackendCapabilities(
            name: .sandbox, available: reason == nil, reason: reason,
            runtimes: reason == nil ? Runtime.allCases.filter { support.executables[$0] != nil } : [],
            isolation: "namespaces",
            limits: ProcessLaunch.limitsReport() + [
                ("disk", .string(WorkFolder.diskReport(sandboxed: true))),
                ("uid", .string(getuid() == 0
                    ? "a host uid of its own per running workload, from KILN_SANDBOX_UIDS (\(identities.range.lowerBound)-\(identities.range.upperBound)); nobody inside"
                    : "the server's own uid (Kiln is not root)")),
            ],
            network: "none (own network namespace with loopback only)",
            filesystem: "read-only /usr, private /etc, /tmp and /dev; the work folder is the only writable place")
    }

    func arguments(_ spec: ExecutionSpec, work: WorkFolder, uid: uid_t, command: [String]) -> [String] {
        var a: [String] = []
        if getuid() == 0, let setpriv {
            a += [setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--"]
        }
        // /tmp shares the work folder's tmpfs (one disk_mb for both); without one, a tmpfs of its own.
        let tmp = work.bounded ? ["--bind", work.tmpPath, "/tmp"] : ["--size", String(spec.resources.diskMB << 20), "--tmpfs", "/tmp"]
        a += [bwrap ?? "bwrap",
              "--unshare-all", "--unshare-user", "--unshare-cgroup", "--disable-userns", "--die-with-parent", "--new-session",
              "--uid", "\(SandboxSupport.nobody)", "--gid", "\(SandboxSupport.nobody)", "--cap-drop", "ALL", "--hostname", "kiln",
              "--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local",
              "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
              "--ro-bind", support.etcFolder, "/etc",
              "--dev", "/dev", "--size", "16777216", "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
              "--proc", "/proc",
              "--bind", work.path, "/work"] + tmp + ["--remount-ro", "/", "--chdir", "/work", "--clearenv"]
        for (k, v) in ProcessLaunch.environment(spec, home: "/work") { a += ["--setenv", k, v] }
        return a + ["--"] + command
    }

    public func execute(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        var uid = getuid()
        if uid == 0 {
            guard let own = identities.acquire() else {
                return ExecutionResult(exitCode: nil, error: "every sandbox uid of KILN_SANDBOX_UIDS is in use")
            }
            uid = own
        }
        // Freed after the work folder is gone and the cgroup emptied (runLimited returned).
        defer { if uid != getuid() { identities.release(uid) } }
        let run: SandboxSupport.Run
        switch support.prepareRun(spec, owner: uid) {
        case .success(let r): run = r
        case .failure(let failure): return failure.result
        }
        defer { run.folder.remove() }
        let (folder, prepared) = (run.folder, run.prepared)
        let argv = arguments(spec, work: folder, uid: uid, command: run.command)
        // bubblewrap and the init of its PID namespace (setpriv execs bubblewrap) are Kiln's.
        return ProcessLaunch.runLimited(spec, writer: writer, cancellation: cancellation, what: "the sandbox",
                                        helpers: 2 + ProcessLaunch.firstProcessHelpers(pidNamespace: false)) { cgroup in
            try ChildProcess.spawn(SpawnSpec(
                executable: argv[0], arguments: argv, environment: ["PATH": RuntimeLocator.minimalPath],
                workingDirectory: folder.path, stdinPath: prepared.stdinPath,
                memoryLimitBytes: prepared.memoryLimitBytes(spec), cpuLimitSeconds: ProcessLaunch.cpuSeconds(spec),
                // bwrap makes its own PID namespace (and dies with Kiln through --die-with-parent);
                // inside one of Kiln's it would look its child up in a /proc of another namespace.
                usePIDNamespace: false, cgroup: cgroup))
        }
    }
}

/// `gvisor`: gVisor's `runsc` with `--network=none`, a read-only root made of `/usr` and a
/// private `/etc`, the work folder writable, RLIMIT_AS inside and a memory cgroup of
/// mem_mb + 64 MB around it. Each workload has its own container id and state folder,
/// removed afterwards; leftovers of a killed server are swept at start.
public struct GVisorBackend: Backend {
    public let name: Isolation = .gvisor
    let support: SandboxSupport
    let runsc: String?
    let logger: Logger

    public init(stateRoot: String, workRoot: String, logger: Logger, executables: [Runtime: String] = RuntimeLocator.executables()) {
        support = SandboxSupport(stateRoot: stateRoot, workRoot: workRoot, executables: executables)
        runsc = RuntimeLocator.find("runsc")
        self.logger = logger
        try? support.prepareEtc()
        try? prepareRootfs()
        sweep()
    }

    var rootfs: String { "\(support.stateRoot)/gvisor-rootfs" }
    var containers: String { "\(support.stateRoot)/gvisor" }

    func prepareRootfs() throws {
        let fm = FileManager.default
        for dir in ["usr", "etc", "work", "tmp", "proc", "dev"] {
            try fm.createDirectory(atPath: "\(rootfs)/\(dir)", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        for (link, target) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
            let path = "\(rootfs)/\(link)"
            if (try? fm.destinationOfSymbolicLink(atPath: path)) == nil {
                try fm.createSymbolicLink(atPath: path, withDestinationPath: target)
            }
        }
        try fm.createDirectory(atPath: containers, withIntermediateDirectories: true)
    }

    public func capabilities() -> BackendCapabilities {
        var reason: String? = nil
        if runsc == nil { reason = "gVisor (runsc) is not installed" }
        else if getuid() != 0 { reason = "runsc needs root here (no rootless mode configured)" }
        else { reason = SandboxSupport.probe(self) }
        return BackendCapabilities(
            name: .gvisor, available: reason == nil, reason: reason,
            runtimes: reason == nil ? Runtime.allCases.filter { support.executables[$0] != nil } : [],
            isolation: "syscall",
            limits: [
                ("timeout", .bool(true)),
                ("memory", .string("RLIMIT_AS inside gVisor (python, shell), V8 heap limit (node), memory cgroup of mem_mb + 64 MB")),
                ("pids", .string("pids as RLIMIT_NPROC inside gVisor (its processes are not host processes)")),
                ("cpu", .string("timeout only")),
                ("disk", .string(WorkFolder.diskReport(sandboxed: true))),
            ],
            network: "none (--network=none)",
            filesystem: "read-only /usr and private /etc through gVisor's gofer; private /tmp; the work folder is the only writable place")
    }

    func config(_ spec: ExecutionSpec, work: WorkFolder, command: [String], rlimitMemory: Bool) -> JSON {
        var rlimits: [JSON] = [
            .object([("type", .string("RLIMIT_NOFILE")), ("soft", .int(1024)), ("hard", .int(1024))]),
            .object([("type", .string("RLIMIT_CORE")), ("soft", .int(0)), ("hard", .int(0))]),
            // `pids`, enforced by the sandbox's kernel on its processes: its tasks are not
            // host processes, so the host's pids cgroup would count only gVisor's own threads.
            .object([("type", .string("RLIMIT_NPROC")), ("soft", .int(Int64(spec.resources.pids))), ("hard", .int(Int64(spec.resources.pids)))]),
        ]
        if rlimitMemory {
            let bytes = Int64(spec.resources.memMB) << 20
            rlimits.append(.object([("type", .string("RLIMIT_AS")), ("soft", .int(bytes)), ("hard", .int(bytes))]))
        }
        func mount(_ dest: String, _ type: String, _ source: String, _ options: [String]) -> JSON {
            .object([("destination", .string(dest)), ("type", .string(type)), ("source", .string(source)),
                     ("options", .array(options.map { .string($0) }))])
        }
        let none: JSON = .array([])
        // /tmp shares the work folder's tmpfs (one disk_mb for both); without one, gVisor's own tmpfs.
        let tmp = work.bounded ? mount("/tmp", "bind", work.tmpPath, ["rbind", "rw", "nosuid", "nodev"])
            : mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777", "size=\(spec.resources.diskMB)m"])
        return .object([
            ("ociVersion", .string("1.0.2")),
            ("process", .object([
                ("terminal", .bool(false)),
                ("user", .object([("uid", .int(Int64(SandboxSupport.nobody))), ("gid", .int(Int64(SandboxSupport.nobody)))])),
                ("args", .array(command.map { .string($0) })),
                ("env", .array(ProcessLaunch.environment(spec, home: "/work").map { .string("\($0.0)=\($0.1)") })),
                ("cwd", .string("/work")),
                ("capabilities", .object([("bounding", none), ("effective", none), ("inheritable", none), ("permitted", none), ("ambient", none)])),
                ("rlimits", .array(rlimits)),
                ("noNewPrivileges", .bool(true)),
            ])),
            ("root", .object([("path", .string(rootfs)), ("readonly", .bool(true))])),
            ("hostname", .string("kiln")),
            ("mounts", .array([
                .object([("destination", .string("/proc")), ("type", .string("proc")), ("source", .string("proc"))]),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "mode=755"]),
                mount("/dev/shm", "tmpfs", "tmpfs", ["nosuid", "nodev", "noexec", "mode=1777", "size=16m"]),
                tmp,
                mount("/usr", "bind", "/usr", ["rbind", "ro", "nosuid", "nodev"]),
                mount("/etc", "bind", support.etcFolder, ["rbind", "ro", "nosuid", "nodev"]),
                mount("/work", "bind", work.path, ["rbind", "rw", "nosuid", "nodev"]),
            ])),
            ("linux", .object([
                ("namespaces", .array(["pid", "network", "ipc", "uts", "mount"].map { .object([("type", .string($0))]) })),
                ("cgroupsPath", .string("/kiln/\(spec.id)")),
                ("resources", .object([("memory", .object([("limit", .int(Int64(spec.resources.memMB + 64) << 20))]))])),
            ])),
        ])
    }

    public func execute(_ spec: ExecutionSpec, writer: any LogWriter, cancellation: Cancellation) -> ExecutionResult {
        guard let runsc else { return ExecutionResult(exitCode: nil, error: "runsc is not installed") }
        let run: SandboxSupport.Run
        switch support.prepareRun(spec, owner: uid_t(SandboxSupport.nobody)) {
        case .success(let r): run = r
        case .failure(let failure): return failure.result
        }
        defer { run.folder.remove() }
        let (folder, prepared) = (run.folder, run.prepared)
        var command = run.command
        if spec.runtime == .python { command = [command[0], "-c", SandboxSupport.pythonLineBuffered] }
        let state = "\(containers)/\(spec.id)"
        let bundle = "\(state)/bundle"
        let container = "kiln-\(spec.id)"
        defer { cleanUp(state: state, container: container, id: spec.id) }
        do {
            try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
            // Per workload, like its code and input: written without an fsync.
            try WorkFile.write(config(spec, work: folder, command: command, rlimitMemory: prepared.rlimitMemory).encoded(),
                               to: "\(bundle)/config.json")
            // Not in a PID namespace of Kiln's (runsc writes uid maps through the host's /proc),
            // and no RLIMIT_AS on runsc itself (its Go runtime cannot start under one).
            let child = try ChildProcess.spawn(SpawnSpec(
                executable: runsc, arguments: ["runsc", "--root", state, "--network=none", "run", "--bundle", bundle, container],
                environment: ["PATH": RuntimeLocator.minimalPath], workingDirectory: folder.path,
                stdinPath: prepared.stdinPath, usePIDNamespace: false))
            var result = ProcessLaunch.drive(child, spec: spec, writer: writer, cancellation: cancellation)
            if result.exitCode == 137, !result.timedOut, !result.cancelled, cancellation.reason == nil, result.error == nil {
                result.error = "memory limit of \(spec.resources.memMB) MB exceeded (the sandbox was killed by its memory cgroup)"
            }
            return result
        } catch {
            return ExecutionResult(exitCode: nil, error: "cannot start gVisor: \(error)")
        }
    }

    /// Removes a container's state, its lock files and its cgroups.
    func cleanUp(state: String, container: String, id: String) {
        if let runsc { Self.run(runsc, ["runsc", "--root", state, "delete", "--force", container]) }
        try? FileManager.default.removeItem(atPath: state)
        let cgroups = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []
        for controller in cgroups { rmdir("/sys/fs/cgroup/\(controller)/kiln/\(id)") }
    }

    /// Deletes what a killed server left: every container under the state folder.
    func sweep() {
        guard let runsc else { return }
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: containers)) ?? []
        for id in leftovers {
            let state = "\(containers)/\(id)"
            logger.notice("removing gVisor leftovers of workload \(id)")
            Self.run(runsc, ["runsc", "--root", state, "kill", "kiln-\(id)", "KILL"])
            cleanUp(state: state, container: "kiln-\(id)", id: id)
        }
    }

    @discardableResult
    static func run(_ exe: String, _ args: [String]) -> Int32 {
        guard let c = try? ChildProcess.spawn(SpawnSpec(executable: exe, arguments: args, environment: ["PATH": RuntimeLocator.minimalPath],
                                                        workingDirectory: "/", usePIDNamespace: false)) else { return -1 }
        return c.drive(deadline: .now() + .seconds(20), tickMillis: 1000, onOutput: { _, _ in }, onTick: {}).status
    }
}

/// Keeps the lines a probe prints.
final class CollectingWriter: LogWriter {
    private(set) var lines: [String] = []
    private var splitter = LineSplitter()
    func write(_ stream: LogStream, _ bytes: [UInt8]) { splitter.feed(bytes) { lines.append($0) } }
    func writeLine(_ stream: LogStream, _ line: String) { lines.append(line) }
    func tick() {}
}
