import Foundation

/// Host processes, read from /proc: what the tests look for after a kill.
public enum ProcessTable {
    /// Pids whose command line contains `text`.
    public static func pids(containing text: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid -> Int32? in
            guard let n = Int32(pid), let cmd = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  cmd.contains(text) else { return nil }
            return n
        }
    }

    /// Whether a live process has `marker` in its command line (a zombie's is empty).
    public static func exists(_ marker: String) -> Bool {
        !pids(containing: marker).isEmpty
    }
}
