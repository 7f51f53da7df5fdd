import Foundation
import Glibc

/// What a workload's cgroup allows.
public struct CgroupLimits: Sendable, Equatable {
    /// Memory of every process of the workload, and of the files it keeps in tmpfs.
    public var memoryBytes: Int64
    /// Processes and threads, together.
    public var pids: Int
    /// CPU bandwidth, in whole CPUs.
    public var cpus: Int

    public init(memoryBytes: Int64, pids: Int, cpus: Int) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpus = cpus
    }
}

/// Where this server can make a cgroup per workload: cgroup v2 when the host mounts it with
/// the memory, pids and cpu controllers, else the v1 hierarchies of those three
/// controllers, else nowhere (limits fall back to per-process rlimits).
///
/// Written by hand: cgroups are a handful of files, and no Swift library manages them.
public enum CgroupSupport: Sendable, Equatable {
    /// The folder that holds one cgroup per workload, its controllers enabled.
    case v2(parent: String)
    /// One parent folder per controller: memory, pids, cpu.
    case v1(parents: [String])
    /// Why neither can be used.
    case unavailable(String)

    /// Found once, at first use.
    public static let detected: CgroupSupport = detect()

    public var available: Bool {
        if case .unavailable = self { return false }
        return true
    }

    /// How the limits are enforced, for `/v1/backends`.
    public var summary: String {
        switch self {
        case .v2: return "cgroup v2 (memory.max, pids.max, cpu.max)"
        case .v1: return "cgroup v1 (memory.limit_in_bytes, pids.max, cpu.cfs_quota_us)"
        case .unavailable(let why): return "no cgroup (\(why)): per-process rlimits only"
        }
    }

    static let controllers = ["memory", "pids", "cpu"]

    /// The cgroup this process is in, per hierarchy, from /proc/self/cgroup: "" → the v2
    /// path, "memory" → its v1 path, and so on.
    static func ownPaths() -> [String: String] {
        guard let text = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return [:] }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            for name in parts[1].split(separator: ",", omittingEmptySubsequences: false) { out[String(name)] = String(parts[2]) }
        }
        return out
    }

    static func detect() -> CgroupSupport {
        let own = ownPaths()
        var whyNot: [String] = []
        // v2: the unified mount, at /sys/fs/cgroup or (hybrid hosts) /sys/fs/cgroup/unified.
        for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            guard let path = own[""], let text = try? String(contentsOfFile: "\(mount)\(path)/cgroup.controllers", encoding: .utf8) else { continue }
            let have = Set(text.split(whereSeparator: \.isWhitespace).map(String.init))
            guard controllers.allSatisfy(have.contains) else {
                whyNot.append("v2 at \(mount) lacks \(controllers.filter { !have.contains($0) }.joined(separator: ", "))")
                continue
            }
            switch prepareV2(mount + (path == "/" ? "" : path)) {
            case .success(let parent): return .v2(parent: parent)
            case .failure(let error): whyNot.append("v2 at \(mount): \(error.description)")
            }
        }
        // v1: a hierarchy per controller.
        var parents: [String] = []
        for c in controllers {
            guard let path = own[c] else { whyNot.append("no v1 \(c) controller"); break }
            let parent = "/sys/fs/cgroup/\(c)\(path == "/" ? "" : path)/kiln"
            if mkdir(parent, 0o755) != 0 && errno != EEXIST {
                whyNot.append("cannot create \(parent): \(String(cString: strerror(errno)))")
                break
            }
            parents.append(parent)
        }
        if parents.count == controllers.count { return .v1(parents: parents) }
        return .unavailable(whyNot.joined(separator: "; "))
    }

    /// Makes `<own>/kiln` with the three controllers enabled for its children. A cgroup
    /// with processes in it cannot enable controllers for its children (v2's rule of no
    /// internal processes), which is the case inside a container whose cgroup is the
    /// server's own: then the server first moves itself into `<own>/kiln-server`.
    static func prepareV2(_ own: String) -> Result<String, CgroupError> {
        let enable = "+memory +pids +cpu"
        if (try? CgroupFile.write("\(own)/cgroup.subtree_control", enable)) == nil {
            let leaf = "\(own)/kiln-server"
            if mkdir(leaf, 0o755) != 0 && errno != EEXIST { return .failure(CgroupError("cannot create \(leaf): \(String(cString: strerror(errno)))")) }
            do {
                try CgroupFile.write("\(leaf)/cgroup.procs", String(getpid()))
                try CgroupFile.write("\(own)/cgroup.subtree_control", enable)
            } catch {
                return .failure(error)
            }
        }
        let parent = "\(own)/kiln"
        if mkdir(parent, 0o755) != 0 && errno != EEXIST { return .failure(CgroupError("cannot create \(parent): \(String(cString: strerror(errno)))")) }
        do {
            try CgroupFile.write("\(parent)/cgroup.subtree_control", enable)
        } catch {
            return .failure(error)
        }
        return .success(parent)
    }
}

public struct CgroupError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Reads and writes of cgroup files: one `write` each, never a temporary file and a rename.
enum CgroupFile {
    static func write(_ path: String, _ value: String) throws(CgroupError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CgroupError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else { throw CgroupError("cannot write \(value) to \(path): \(String(cString: strerror(errno)))") }
    }

    static func read(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }

    /// `key N` from a flat-keyed file such as memory.events or memory.oom_control.
    static func counter(_ path: String, _ key: String) -> Int64? {
        guard let text = read(path) else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == key { return Int64(parts[1]) }
        }
        return nil
    }
}

/// One workload's cgroup: made before the workload starts, joined by its first process
/// between clone and exec (so nothing it starts is ever outside), emptied and removed
/// when it ends.
public final class WorkloadCgroup: Sendable {
    /// One folder (v2) or one per controller (v1).
    public let folders: [String]
    let version: Int
    let limits: CgroupLimits

    /// Makes the cgroup with its limits, or nil when this host has none to use (the
    /// caller falls back to rlimits). Throws when cgroups are there but this one failed:
    /// a workload is never run without the limits it would have had.
    public static func create(id: String, limits: CgroupLimits,
                              support: CgroupSupport = .detected) throws(CgroupError) -> WorkloadCgroup? {
        let cgroup: WorkloadCgroup
        switch support {
        case .unavailable: return nil
        case .v2(let parent): cgroup = WorkloadCgroup(folders: ["\(parent)/\(id)"], version: 2, limits: limits)
        case .v1(let parents): cgroup = WorkloadCgroup(folders: parents.map { "\($0)/\(id)" }, version: 1, limits: limits)
        }
        // A folder left by a killed server (the same id never runs twice otherwise).
        cgroup.remove()
        for folder in cgroup.folders where mkdir(folder, 0o755) != 0 {
            let why = String(cString: strerror(errno))
            cgroup.remove()
            throw CgroupError("cannot create \(folder): \(why)")
        }
        do {
            try cgroup.applyLimits()
        } catch {
            cgroup.remove()
            throw error
        }
        return cgroup
    }

    /// A cgroup over existing folders, with no limits written: for tests of how a child joins.
    init(folders: [String], version: Int, limits: CgroupLimits) {
        self.folders = folders
        self.version = version
        self.limits = limits
    }

    private func folder(_ controller: String) -> String {
        version == 2 ? folders[0] : folders[CgroupSupport.controllers.firstIndex(of: controller)!]
    }

    private func applyLimits() throws(CgroupError) {
        let memory = folder("memory"), pids = folder("pids"), cpu = folder("cpu")
        let period = 100_000
        if version == 2 {
            try CgroupFile.write("\(memory)/memory.max", String(limits.memoryBytes))
            // No swap: the limit is the memory the workload holds, not a slower version of it.
            if access("\(memory)/memory.swap.max", F_OK) == 0 { try CgroupFile.write("\(memory)/memory.swap.max", "0") }
            try CgroupFile.write("\(pids)/pids.max", String(limits.pids))
            try CgroupFile.write("\(cpu)/cpu.max", "\(limits.cpus * period) \(period)")
        } else {
            try CgroupFile.write("\(memory)/memory.limit_in_bytes", String(limits.memoryBytes))
            // With swap accounting on, memory+swap gets the same bound (set after the memory one).
            if access("\(memory)/memory.memsw.limit_in_bytes", F_OK) == 0 {
                try CgroupFile.write("\(memory)/memory.memsw.limit_in_bytes", String(limits.memoryBytes))
            }
            try CgroupFile.write("\(pids)/pids.max", String(limits.pids))
            try CgroupFile.write("\(cpu)/cpu.cfs_period_us", String(period))
            try CgroupFile.write("\(cpu)/cpu.cfs_quota_us", String(limits.cpus * period))
        }
    }

    /// The `cgroup.procs` files the workload's first process writes "0" into (itself)
    /// before it execs, opened here because the child may only make plain system calls.
    public func openProcsFiles() throws(CgroupError) -> [Int32] {
        var fds: [Int32] = []
        for folder in folders {
            let fd = open("\(folder)/cgroup.procs", O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else {
                let why = String(cString: strerror(errno))
                for fd in fds { close(fd) }
                throw CgroupError("cannot open \(folder)/cgroup.procs: \(why)")
            }
            fds.append(fd)
        }
        return fds
    }

    /// What kiln-init gets to put the workload into the cgroup: on v2 the folder, which the
    /// workload is cloned into (clone3's CLONE_INTO_CGROUP: no cgroup.procs write, so its
    /// start does not wait for the kernel's threadgroup lock); on v1 the cgroup.procs files.
    func openForInit() throws(CgroupError) -> [Int32] {
        guard version == 2 else { return try openProcsFiles() }
        let fd = open(folders[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw CgroupError("cannot open \(folders[0]): \(String(cString: strerror(errno)))") }
        return [fd]
    }

    /// Whether the kernel killed a process of the workload for going over its memory.
    public var memoryExceeded: Bool {
        let memory = folder("memory")
        if version == 2 { return (CgroupFile.counter("\(memory)/memory.events", "oom_kill") ?? 0) > 0 }
        if let kills = CgroupFile.counter("\(memory)/memory.oom_control", "oom_kill") { return kills > 0 }
        // Kernels before 4.13 count no kills: hitting the limit is the nearest sign.
        return (Int64(CgroupFile.read("\(memory)/memory.failcnt")?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0) > 0
    }

    /// The processes still in it.
    public var processes: [Int32] {
        (CgroupFile.read("\(folders[0])/cgroup.procs") ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// SIGKILLs everything in it, a daemonized grandchild included, and waits (briefly) until it is empty.
    public func killAll() {
        if version == 2, (try? CgroupFile.write("\(folders[0])/cgroup.kill", "1")) != nil {
            for _ in 0..<200 {
                if processes.isEmpty { return }
                usleep(5_000)
            }
            return
        }
        // v1 has no cgroup.kill: kill what is listed until nothing is (a fork racing the
        // kill shows up in the next read).
        for _ in 0..<200 {
            let left = processes
            if left.isEmpty { return }
            for pid in left { kill(pid, SIGKILL) }
            usleep(5_000)
        }
    }

    /// Removes the folders (after `killAll`); a folder with processes left stays, and the
    /// next server's start or a workload of the same id removes it.
    public func remove() {
        for folder in folders {
            // EBUSY while the last process's exit is still being accounted; ENOENT: gone.
            for _ in 0..<100 {
                if rmdir(folder) == 0 || errno != EBUSY { break }
                usleep(5_000)
            }
        }
    }
}
