internal import CKilnSys
import Foundation
import KilnCore

/// How to start one workload process.
public struct SpawnSpec: Sendable {
    public var executable: String
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    /// A file that becomes stdin; /dev/null when nil.
    public var stdinPath: String?
    /// RLIMIT_AS in bytes.
    public var memoryLimitBytes: Int?
    /// RLIMIT_CPU in seconds.
    public var cpuLimitSeconds: Int?
    /// Run the process as the init-managed child of a new PID namespace, so the whole
    /// tree dies with it. Falls back to a plain process group when refused.
    public var usePIDNamespace: Bool
    /// Give the child a pipe as stdin, written with `ChildProcess.writeStdin` (ignores `stdinPath`).
    public var stdinPipe: Bool
    /// The cgroup the child joins before it execs (nil: none).
    public var cgroup: WorkloadCgroup?

    public init(executable: String, arguments: [String], environment: [String: String],
                workingDirectory: String, stdinPath: String? = nil, memoryLimitBytes: Int? = nil,
                cpuLimitSeconds: Int? = nil, usePIDNamespace: Bool = true, stdinPipe: Bool = false,
                cgroup: WorkloadCgroup? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.stdinPath = stdinPath
        self.memoryLimitBytes = memoryLimitBytes
        self.cpuLimitSeconds = cpuLimitSeconds
        self.usePIDNamespace = usePIDNamespace
        self.stdinPipe = stdinPipe
        self.cgroup = cgroup
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

public enum ChildOutput: Sendable {
    case stdout
    case stderr
}

/// Why the drive loop ended.
public struct ChildExit: Sendable {
    /// Exit status; 128 + signal number when a signal ended it.
    public var status: Int32
    /// The deadline passed and the process group was killed.
    public var timedOut: Bool
    /// `stop()` was called and the process group was killed.
    public var stopped: Bool
}

/// A running child process with its stdout and stderr pipes, driven by `drive`
/// on the caller's thread.
public final class ChildProcess: @unchecked Sendable {
    public let pid: Int32
    public let inPIDNamespace: Bool
    private let stdoutFD: Int32
    private let stderrFD: Int32
    private let pidFD: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    // Guarded by `stdinLock`: -1 once closed.
    private let stdinLock = NSLock()
    private var stdinWrite: Int32
    // Guarded by `lock`.
    private let lock = NSLock()
    private var stopRequested = false
    private var reaped = false

    private init(pid: Int32, inPIDNamespace: Bool, stdoutFD: Int32, stderrFD: Int32, pidFD: Int32, wakeRead: Int32,
                 wakeWrite: Int32, stdinWrite: Int32) {
        self.stdinWrite = stdinWrite
        self.pid = pid
        self.inPIDNamespace = inPIDNamespace
        self.stdoutFD = stdoutFD
        self.stderrFD = stderrFD
        self.pidFD = pidFD
        self.wakeRead = wakeRead
        self.wakeWrite = wakeWrite
    }

    deinit {
        for fd in [stdoutFD, stderrFD, pidFD, wakeRead, wakeWrite, stdinWrite] where fd >= 0 { close(fd) }
        lock.lock()
        let needsReap = !reaped
        lock.unlock()
        if needsReap {
            kill(-pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
    }

    /// Whether this kernel lets Kiln make a PID namespace per workload.
    public static let pidNamespacesWork: Bool = {
        guard let child = try? spawn(SpawnSpec(executable: "/bin/sh", arguments: ["sh", "-c", ":"], environment: [:], workingDirectory: "/", usePIDNamespace: true)) else { return false }
        _ = child.drive(deadline: nil, tickMillis: 1000) { _, _ in } onTick: {}
        return child.inPIDNamespace
    }()

    public static func spawn(_ spec: SpawnSpec) throws -> ChildProcess {
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        var wake: [Int32] = [-1, -1]
        guard kiln_pipe(&out, 0) == 0 else { throw SpawnError(description: "pipe: \(errnoText())") }
        guard kiln_pipe(&err, 0) == 0 else {
            close(out[0]); close(out[1])
            throw SpawnError(description: "pipe: \(errnoText())")
        }
        guard kiln_pipe(&wake, 1) == 0 else {
            for fd in out + err { close(fd) }
            throw SpawnError(description: "pipe: \(errnoText())")
        }
        var input: [Int32] = [-1, -1]
        if spec.stdinPipe {
            guard kiln_pipe(&input, 0) == 0 else {
                for fd in out + err + wake { close(fd) }
                throw SpawnError(description: "pipe: \(errnoText())")
            }
        } else {
            input[0] = open(spec.stdinPath ?? "/dev/null", O_RDONLY | O_CLOEXEC)
        }
        let stdinFD = input[0]
        guard stdinFD >= 0 else {
            for fd in out + err + wake { close(fd) }
            throw SpawnError(description: "open stdin: \(errnoText())")
        }
        let initPath = KilnInit.path
        let cgroupFDs: [Int32]
        do {
            cgroupFDs = try spec.cgroup.map { cgroup throws(CgroupError) in
                initPath != nil ? try cgroup.openForInit() : try cgroup.openProcsFiles()
            } ?? []
        } catch {
            for fd in out + err + wake + [stdinFD, input[1]] where fd >= 0 { close(fd) }
            throw SpawnError(description: error.description)
        }
        defer {
            close(stdinFD)
            close(out[1])
            close(err[1])
            for fd in cgroupFDs { close(fd) }
        }
        // Through kiln-init: it is what the clone execs, and the workload is its argument.
        let executable = initPath ?? spec.executable
        let arguments = initPath == nil ? spec.arguments
            : ["kiln-init", spec.cgroup.map { $0.version == 2 ? "v2" : "v1" } ?? "none", String(cgroupFDs.count),
               spec.executable] + spec.arguments
        var inNamespace: Int32 = 0
        let pid = Spawner.shared.run {
            withCStrings(arguments) { argv in
                withCStrings(spec.environment.map { "\($0.key)=\($0.value)" }) { envp in
                    executable.withCString { path in
                        spec.workingDirectory.withCString { cwd in
                            cgroupFDs.withUnsafeBufferPointer { groups in
                                var opts = kiln_spawn_opts(
                                    path: path, argv: argv, envp: envp, cwd: cwd,
                                    stdin_fd: stdinFD, stdout_fd: out[1], stderr_fd: err[1],
                                    mem_bytes: Int64(spec.memoryLimitBytes ?? 0),
                                    cpu_seconds: Int64(spec.cpuLimitSeconds ?? 0),
                                    use_pid_namespace: spec.usePIDNamespace ? 1 : 0,
                                    cgroup_fds: groups.baseAddress, cgroup_fd_count: Int32(groups.count))
                                return initPath != nil ? kiln_spawn_through_init(&opts, &inNamespace)
                                    : kiln_spawn(&opts, &inNamespace)
                            }
                        }
                    }
                }
            }
        }
        guard pid > 0 else {
            for fd in [out[0], err[0], wake[0], wake[1], input[1]] where fd >= 0 { close(fd) }
            throw SpawnError(description: "spawn \(spec.executable): \(String(cString: strerror(-pid)))")
        }
        _ = fcntl(out[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(err[0], F_SETFL, O_NONBLOCK)
        let pidFD = kiln_pidfd_open(pid)
        return ChildProcess(pid: pid, inPIDNamespace: inNamespace != 0, stdoutFD: out[0], stderrFD: err[0],
                            pidFD: pidFD, wakeRead: wake[0], wakeWrite: wake[1], stdinWrite: input[1])
    }

    /// Writes all of `bytes` to the child's stdin pipe; false once it is closed or broken.
    public func writeStdin(_ bytes: [UInt8]) -> Bool {
        stdinLock.lock()
        defer { stdinLock.unlock() }
        guard stdinWrite >= 0 else { return false }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in write(stdinWrite, raw.baseAddress! + offset, raw.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    /// Closes the stdin pipe: the child reads end of file.
    public func closeStdin() {
        stdinLock.lock()
        if stdinWrite >= 0 { close(stdinWrite) }
        stdinWrite = -1
        stdinLock.unlock()
    }

    /// Asks `drive` to end the process group (SIGTERM, then SIGKILL after the grace).
    public func stop() {
        lock.lock()
        stopRequested = true
        lock.unlock()
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }

    private var isStopRequested: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopRequested
    }

    /// Runs until the process has exited and its pipes are drained. Calls `onOutput`
    /// with each chunk read and `onTick` every `tickMillis` while running. At
    /// `deadline`, or after `stop()`, the group gets SIGTERM and, `graceMillis` later, SIGKILL.
    public func drive(deadline: DispatchTime?, tickMillis: Int, graceMillis: Int = 1000,
                      onOutput: (ChildOutput, [UInt8]) -> Void, onTick: () -> Void) -> ChildExit {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var outOpen = true
        var errOpen = true
        var exitStatus: Int32? = nil
        var timedOut = false
        var stopped = false
        var killAt: DispatchTime? = nil
        var exitedAt: DispatchTime? = nil
        var lastTick = DispatchTime.now()

        func terminate() {
            if killAt == nil {
                kill(-pid, SIGTERM)
                killAt = .now() + .milliseconds(graceMillis)
            }
        }

        while outOpen || errOpen || exitStatus == nil {
            let now = DispatchTime.now()
            if exitStatus == nil {
                if !stopped && isStopRequested { stopped = true; terminate() }
                if !timedOut && !stopped, let deadline, now >= deadline { timedOut = true; terminate() }
                if let k = killAt, now >= k { kill(-pid, SIGKILL) }
            }
            // Pipes held open by a leftover process after the main one exited: give them
            // a short drain, then end the group.
            if let e = exitedAt, now.uptimeNanoseconds - e.uptimeNanoseconds > 200_000_000 {
                kill(-pid, SIGKILL)
                if now.uptimeNanoseconds - e.uptimeNanoseconds > 1_000_000_000 { break }
            }
            var fds: [pollfd] = []
            if outOpen { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
            if errOpen { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
            if exitStatus == nil && pidFD >= 0 { fds.append(pollfd(fd: pidFD, events: Int16(POLLIN), revents: 0)) }
            fds.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            var timeout = tickMillis
            if pidFD < 0 && exitStatus == nil { timeout = min(timeout, 20) }
            if let k = killAt, exitStatus == nil { timeout = min(timeout, max(1, Int((Int64(k.uptimeNanoseconds) - Int64(now.uptimeNanoseconds)) / 1_000_000) + 1)) }
            if let deadline, killAt == nil { timeout = min(timeout, max(1, Int((Int64(deadline.uptimeNanoseconds) - Int64(now.uptimeNanoseconds)) / 1_000_000) + 1)) }
            if exitedAt != nil { timeout = min(timeout, 50) }
            let ready = poll(&fds, nfds_t(fds.count), Int32(timeout))
            if ready < 0 && errno != EINTR { break }
            for p in fds where p.revents != 0 {
                if p.fd == stdoutFD || p.fd == stderrFD {
                    let n = buffer.withUnsafeMutableBytes { read(p.fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        onOutput(p.fd == stdoutFD ? .stdout : .stderr, Array(buffer[0..<n]))
                    } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                        if p.fd == stdoutFD { outOpen = false } else { errOpen = false }
                    }
                } else if p.fd == wakeRead {
                    var sink = [UInt8](repeating: 0, count: 64)
                    _ = read(wakeRead, &sink, sink.count)
                }
            }
            if exitStatus == nil, let s = reap(blocking: false) {
                exitStatus = s
                exitedAt = .now()
            }
            let after = DispatchTime.now()
            if after.uptimeNanoseconds - lastTick.uptimeNanoseconds >= UInt64(tickMillis) * 1_000_000 {
                lastTick = after
                onTick()
            }
        }
        if exitStatus == nil {
            kill(-pid, SIGKILL)
            exitStatus = reap(blocking: true) ?? 137
        }
        // Anything still in the group (a daemonized grandchild without a PID namespace).
        kill(-pid, SIGKILL)
        return ChildExit(status: exitStatus ?? 137, timedOut: timedOut, stopped: stopped)
    }

    private func reap(blocking: Bool) -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if reaped { return nil }
        var status: Int32 = 0
        let r = waitpid(pid, &status, blocking ? 0 : WNOHANG)
        guard r == pid else { return nil }
        reaped = true
        let low = status & 0x7f
        if low == 0 { return (status >> 8) & 0xff }
        return 128 + low
    }
}

private func errnoText() -> String { String(cString: strerror(errno)) }

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// One thread that lives as long as the server and makes every spawn call: the
/// children's parent-death signal is tied to the thread that created them, and a
/// Dispatch worker thread can exit at any time.
final class Spawner: @unchecked Sendable {
    static let shared = Spawner()
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []

    private init() {
        let thread = Thread { [unowned self] in self.loop() }
        thread.name = "kiln-spawner"
        thread.start()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    func run(_ body: @escaping () -> Int32) -> Int32 {
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Int32>(-1)
        condition.lock()
        jobs.append {
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
        condition.signal()
        condition.unlock()
        done.wait()
        return result.withLock { $0 }
    }
}

