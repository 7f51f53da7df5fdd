import ArgumentParser
import Foundation

// Shared by `run` and `reliability`: where things are, and the machine's load.

/// /proc/loadavg's first three figures: other work on the machine skews the figures.
func loadAverage() -> String {
    let s = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
    return s.split(separator: " ").prefix(3).joined(separator: " ")
}

/// The benchmarks folder: the one holding this package (walk up from the executable).
func findBenchmarksDir() -> String {
    var dir = (selfExecutable() as NSString).deletingLastPathComponent
    for _ in 0..<6 {
        if FileManager.default.fileExists(atPath: dir + "/Package.swift"),
           FileManager.default.fileExists(atPath: dir + "/Sources/KilnBench") { return dir }
        dir = (dir as NSString).deletingLastPathComponent
    }
    return FileManager.default.currentDirectoryPath
}

func findKiln(_ benchDir: String) throws -> String {
    if let env = ProcessInfo.processInfo.environment["KILN_BIN"] { return env }
    let root = (benchDir as NSString).deletingLastPathComponent
    for p in [root + "/.build/release/kiln", root + "/.build/debug/kiln"]
    where FileManager.default.isExecutableFile(atPath: p) {
        return p
    }
    throw ValidationError("no kiln binary under \(root)/.build; build the server first or pass --kiln")
}
