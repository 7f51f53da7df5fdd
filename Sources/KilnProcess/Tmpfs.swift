import Foundation
import Glibc

/// A size-limited tmpfs mounted over a folder: a workload's work folder, so that what it
/// writes there (and in `/tmp`, a folder inside) is bounded by `disk_mb` in the kernel: a
/// write past it fails with ENOSPC, and nothing of it lands on the server's disk. Its pages
/// are charged to the memory cgroup of whoever writes them, so they count toward `mem_mb`
/// as well. Mounting needs CAP_SYS_ADMIN (root, outside a locked-down container).
public enum Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (an existing folder), nosuid and nodev, with its
    /// root owned by `owner` and mode 0700. Throws when the kernel refuses.
    public static func mount(at path: String, bytes: Int, owner: uid_t) throws {
        let options = "size=\(bytes),mode=0700,uid=\(owner),gid=\(owner)"
        guard Glibc.mount("tmpfs", path, "tmpfs", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            throw SpawnError(description: "cannot mount a tmpfs at \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Detaches the mount at `path` (at once, even while something still holds it open).
    public static func unmount(_ path: String) {
        _ = umount2(path, Int32(MNT_DETACH))
    }

    /// Unmounts every mount at or below `root`, deepest first: what a killed server left.
    public static func unmountAll(under root: String) {
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return }
        let prefix = root.hasSuffix("/") ? root : root + "/"
        let points = table.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let point = unescape(String(fields[4]))
            return point == root || point.hasPrefix(prefix) ? point : nil
        }
        for point in points.sorted(by: { $0.count > $1.count }) { unmount(point) }
    }

    /// mountinfo writes space, tab, newline and backslash as `\ooo`.
    static func unescape(_ field: String) -> String {
        var out: [UInt8] = []
        let bytes = Array(field.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
               let v = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
