import Foundation
import KilnProcess

/// A workload's work folder, removed afterwards. As root it is a tmpfs of `disk_mb`
/// (`Tmpfs`), owned by the uid the workload runs as, mode 0700: what the workload writes
/// there is bounded in the kernel and no other workload's uid can enter. The sandboxed
/// backends bind its `.tmp` folder as `/tmp`, so the work folder and `/tmp` share the one
/// bound. Where Kiln cannot mount (not root), it is a plain folder and `bounded` is false.
struct WorkFolder {
    let path: String
    let bounded: Bool

    var tmpPath: String { path + "/.tmp" }

    init(root: String, id: String, diskMB: Int, owner: uid_t, withTmp: Bool) throws {
        path = "\(root)/\(id)"
        // The root must stay traversable: sandboxed workloads run as other users.
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o711])
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        var mounted = false
        if getuid() == 0 {
            do {
                try Tmpfs.mount(at: path, bytes: diskMB << 20, owner: owner)
                mounted = true
            } catch {
                // A container without CAP_SYS_ADMIN: a plain folder (`/v1/backends` says so).
            }
        }
        bounded = mounted
        if !mounted, getuid() == 0, owner != 0 { _ = chown(path, owner, owner) }
        if withTmp {
            try FileManager.default.createDirectory(atPath: tmpPath, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o700])
            if getuid() == 0 { _ = chown(tmpPath, owner, owner) }
        }
    }

    func remove() {
        if bounded { Tmpfs.unmount(path) }
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Whether work folders are tmpfs mounts here: root, and the kernel lets Kiln mount.
    static let canBound: Bool = {
        guard getuid() == 0 else { return false }
        let probe = NSTemporaryDirectory() + "kiln-tmpfs-probe-\(UUID().uuidString)"
        guard mkdir(probe, 0o700) == 0 else { return false }
        defer { rmdir(probe) }
        guard (try? Tmpfs.mount(at: probe, bytes: 1 << 20, owner: 0)) != nil else { return false }
        Tmpfs.unmount(probe)
        return true
    }()

    /// What `/v1/backends` says of `disk_mb` for a backend whose work folder is this.
    static func diskReport(sandboxed: Bool) -> String {
        guard canBound else { return "not enforced: Kiln cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)" }
        return sandboxed
            ? "disk_mb for the work folder and /tmp together (a tmpfs; its pages count toward mem_mb too)"
            : "disk_mb for the work folder (a tmpfs; its pages count toward mem_mb too); the process backend can write wherever the server can"
    }
}
