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
