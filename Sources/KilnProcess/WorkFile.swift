import Foundation

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
