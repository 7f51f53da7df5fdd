import ArgumentParser
import Foundation

// Shared by `run` and `reliability`: their common options, where things are, the machine,
// and writing results.

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

/// The options every command that starts servers takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "The kiln binary (default: ../.build/release/kiln from the benchmarks folder, else debug).")
    var kiln: String?

    @Option(help: "Results file (default: <benchmarks>/results/latest.json for run, reliability.json for reliability).")
    var out: String?

    @Flag(help: "Small sizes, to check that everything works.")
    var quick = false
}

/// Before a command starts servers and workers: descriptors for thousands of streams, no
/// SIGPIPE, and Ctrl-C stops every child.
func prepareProcess() {
    raiseOpenFileLimit()
    signal(SIGPIPE, SIG_IGN)
    installInterruptHandler()
}

/// The names asked for (`all` for every one), refusing unknown ones.
func selectNames(_ asked: [String], from all: [String], what: String) throws -> Set<String> {
    var chosen = Set(asked.map { $0.lowercased() })
    if chosen.contains("all") { chosen = Set(all) }
    let unknown = chosen.subtracting(all)
    if !unknown.isEmpty { throw ValidationError("unknown \(what): \(unknown.sorted().joined(separator: ", "))") }
    return chosen
}

/// Cores, memory, kernel and load averages, for a results file.
func machineJSON(loadBefore: String) -> JV {
    var uts = utsname()
    uname(&uts)
    let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return .obj([("cores", .int(ProcessInfo.processInfo.activeProcessorCount)),
                 ("memory_gib", .num(Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824)),
                 ("kernel", .str(kernel)),
                 ("loadavg_before", .str(loadBefore)), ("loadavg_after", .str(loadAverage()))])
}

/// Writes a results document (creating its folder) and says where.
func writeResults(_ doc: JV, to path: String) throws {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                            withIntermediateDirectories: true)
    try (doc.render() + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    print("\nresults written to \(path)")
}
