import Foundation
import Testing
import KilnTestSupport
@testable import KilnProcess

/// How a workload gets into its cgroup through kiln-init, on the real kernel: on cgroup v2
/// the workload is cloned into it (clone3 with CLONE_INTO_CGROUP), so no cgroup.procs
/// write makes its start wait for the kernel's threadgroup lock, and kiln-init stays
/// outside; on v1 kiln-init writes its own pid and the workload inherits the cgroup.
/// Neither needs controllers, so both run on a host whose v2 mount has none (this one's).
@Suite(.timeLimit(.minutes(5)), .ownThread)
struct CgroupJoinTests {
    /// The host's v2 mount point and this process's cgroup in it, when there is one.
    static let v2: (mount: String, own: String)? = {
        guard let mounts = try? String(contentsOfFile: "/proc/mounts", encoding: .utf8) else { return nil }
        var mount: String?
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 2, fields[2] == "cgroup2" { mount = String(fields[1]) }
        }
        guard let mount, let own = CgroupSupport.ownPaths()[""] else { return nil }
        return (mount, own == "/" ? "" : own)
    }()

    static let v1Pids: String? = {
        guard let own = CgroupSupport.ownPaths()["pids"] else { return nil }
        let folder = "/sys/fs/cgroup/pids\(own == "/" ? "" : own)"
        return access(folder, W_OK) == 0 ? folder : nil
    }()

    static let canUseV2 = getuid() == 0 && v2 != nil
    static let canUseV1 = getuid() == 0 && v1Pids != nil

    @Test func kilnInitIsBuiltBesideTheBinaries() {
        #expect(KilnInit.path != nil, "no kiln-init beside \(CommandLine.arguments.first ?? "?")")
    }

    /// kiln-init starts with every workload: it links libc only, not the Swift runtime that
    /// SwiftPM's link adds to every executable (CModules/KilnInit/main.c says how).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/ldd"), "needs ldd"))
    func kilnInitNeedsNoSwiftLibrary() throws {
        let path = try #require(KilnInit.path)
        let ldd = Process()
        ldd.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
        ldd.arguments = [path]
        let pipe = Pipe()
        ldd.standardOutput = pipe
        try ldd.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        ldd.waitUntilExit()
        #expect(text.contains("libc.so"), "\(text)")
        #expect(!text.contains("swift") && !text.contains("libstdc++"), "\(text)")
    }

    /// Runs `cat <folder>/cgroup.procs /proc/self/cgroup` in `cgroup`: the pids in the
    /// cgroup, and the cgroup lines of the workload itself.
    func lookFromInside(_ cgroup: WorkloadCgroup, pidNamespace: Bool) throws -> (procs: [String], own: [String]) {
        let child = try ChildProcess.spawn(SpawnSpec(executable: "/bin/cat",
                                                     arguments: ["cat", "\(cgroup.folders[0])/cgroup.procs", "/proc/self/cgroup"],
                                                     environment: [:], workingDirectory: "/",
                                                     usePIDNamespace: pidNamespace, cgroup: cgroup))
        var out: [UInt8] = []
        let exit = child.drive(deadline: .now() + .seconds(20), tickMillis: 100) { _, bytes in out += bytes } onTick: {}
        #expect(exit.status == 0, "\(String(decoding: out, as: UTF8.self))")
        let lines = String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
        return (lines.filter { Int($0) != nil }, lines.filter { Int($0) == nil })
    }

    func makeFolder(_ parent: String) throws -> String {
        let folder = "\(parent)/kiln-join-test-\(UUID().uuidString.prefix(8))"
        #expect(mkdir(folder, 0o755) == 0, "mkdir \(folder): \(String(cString: strerror(errno)))")
        return folder
    }

    /// A cgroup over a fresh folder under `parent`, for `body`; emptied and removed after.
    func withCgroup(under parent: String, version: Int, _ body: (WorkloadCgroup, String) throws -> Void) throws {
        let folder = try makeFolder(parent)
        let cgroup = WorkloadCgroup(folders: [folder], version: version, limits: CgroupLimits(memoryBytes: 0, pids: 0, cpus: 0))
        defer {
            cgroup.killAll()
            cgroup.remove()
            #expect(access(folder, F_OK) != 0, "\(folder) is left")
        }
        try body(cgroup, folder)
    }

    @Test(.enabled(if: canUseV2, "needs root and a cgroup v2 mount"), arguments: [false, true])
    func onV2TheWorkloadIsClonedIntoItsCgroup(pidNamespace: Bool) throws {
        try #require(KilnInit.path != nil)
        let (mount, own) = Self.v2!
        try withCgroup(under: mount + own, version: 2) { cgroup, folder in
            let (procs, own2) = try lookFromInside(cgroup, pidNamespace: pidNamespace)
            #expect(own2.contains("0::\(folder.dropFirst(mount.count))"), "\(own2)")
            // Only the workload: kiln-init never wrote itself into cgroup.procs.
            #expect(procs.count == 1, "in the cgroup: \(procs)")
        }
    }

    @Test(.enabled(if: canUseV1, "needs root and a writable cgroup v1 pids hierarchy"), arguments: [false, true])
    func onV1KilnInitJoinsAndTheWorkloadInherits(pidNamespace: Bool) throws {
        try #require(KilnInit.path != nil)
        try withCgroup(under: Self.v1Pids!, version: 1) { cgroup, folder in
            let (procs, own) = try lookFromInside(cgroup, pidNamespace: pidNamespace)
            #expect(own.contains { $0.hasSuffix(":pids:\(folder.dropFirst("/sys/fs/cgroup/pids".count))") }, "\(own)")
            // kiln-init and the workload.
            #expect(procs.count == 2, "in the cgroup: \(procs)")
        }
    }
}
