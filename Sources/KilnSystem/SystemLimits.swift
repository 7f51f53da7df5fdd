import Foundation

/// Process-wide settings a server needs before it accepts connections.
public enum SystemLimits {
    /// Raises the soft open-file limit to the hard one; returns the new soft limit.
    @discardableResult
    public static func raiseOpenFileLimit() -> Int {
        var rl = rlimit()
        let resource = Int32(RLIMIT_NOFILE.rawValue)
        guard getrlimit(__rlimit_resource_t(UInt32(resource)), &rl) == 0 else { return 1024 }
        rl.rlim_cur = rl.rlim_max
        _ = setrlimit(__rlimit_resource_t(UInt32(resource)), &rl)
        return Int(rl.rlim_cur)
    }

    /// A write to a closed socket must fail with EPIPE, not kill the server.
    public static func ignoreSIGPIPE() {
        signal(SIGPIPE, SIG_IGN)
    }

    /// Resident set size of this process in bytes, from /proc.
    public static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let parts = s.split(separator: " ")
        guard parts.count > 1, let pages = Int(parts[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// Small files a workload reads once (its code and input).
public enum WorkFile {
    /// Creates or truncates `path` and writes `bytes`, without the fsync that Foundation's
    /// `Data.write` does: a workload's files are worthless after a crash (the workload is
    /// failed at restart), and two fsyncs were about 0.9 ms of every run (issue 6, B3).
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw SpawnError(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in Glibc.write(fd, raw.baseAddress! + done, raw.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpawnError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}
