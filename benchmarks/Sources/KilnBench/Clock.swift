import Foundation

/// Wall clock in ns (CLOCK_REALTIME): compared with the timestamps workloads print.
@inline(__always)
func realtimeNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Monotonic clock in ns, for durations.
@inline(__always)
func monoNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

func ms(_ ns: UInt64) -> Double { Double(ns) / 1e6 }

/// Percentile (0...100) of samples by nearest rank; NaN when empty.
func percentile(_ samples: [Double], _ p: Double) -> Double {
    guard !samples.isEmpty else { return .nan }
    let s = samples.sorted()
    let rank = Int((p / 100 * Double(s.count)).rounded(.up)) - 1
    return s[max(0, min(s.count - 1, rank))]
}

/// Raises the soft open-file limit to the hard one (20,000 on the benchmark machine).
@discardableResult
func raiseOpenFileLimit() -> Int {
    var rl = rlimit()
    guard getrlimit(__rlimit_resource_t(UInt32(RLIMIT_NOFILE.rawValue)), &rl) == 0 else { return 1024 }
    rl.rlim_cur = rl.rlim_max
    _ = setrlimit(__rlimit_resource_t(UInt32(RLIMIT_NOFILE.rawValue)), &rl)
    return Int(rl.rlim_cur)
}

/// Writes one line to stdout at once (workers talk to the orchestrator through it).
func emitLine(_ s: String) {
    var line = s
    line.append("\n")
    line.withCString { p in
        var off = 0
        let n = strlen(p)
        while off < n {
            let w = write(1, p + off, n - off)
            if w <= 0 { if errno == EINTR { continue }; return }
            off += w
        }
    }
}

func log(_ s: String) {
    FileHandle.standardError.write(Data(("[kiln-bench] " + s + "\n").utf8))
}

/// A value shared between threads behind a lock.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// Busy and total CPU ticks of the whole machine, from /proc/stat.
func machineTicks() -> (busy: UInt64, total: UInt64) {
    guard let s = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
          let line = s.split(separator: "\n").first else { return (0, 0) }
    let v = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
    guard v.count >= 5 else { return (0, 0) }
    let total = v.reduce(0, +)
    let idle = v[3] + v[4]  // idle + iowait
    return (total - idle, total)
}

/// Fraction of the machine's CPU that was busy over `seconds`.
func machineBusy(over seconds: Double) -> Double {
    let a = machineTicks()
    usleep(UInt32(seconds * 1e6))
    let b = machineTicks()
    guard b.total > a.total else { return 0 }
    return Double(b.busy - a.busy) / Double(b.total - a.total)
}

/// Waits (up to `maxSeconds`) for a second in which the machine is mostly idle, so that
/// other work does not skew a benchmark; returns the last busy fraction seen.
func waitForQuietMachine(maxSeconds: Double, threshold: Double = 0.25) -> Double {
    let deadline = monoNs() + UInt64(maxSeconds * 1e9)
    var busy = machineBusy(over: 1)
    var said = false
    while busy > threshold && monoNs() < deadline {
        if !said {
            log(String(format: "machine %.0f%% busy with other work: waiting up to %.0f s for it to calm down", busy * 100, maxSeconds))
            said = true
        }
        busy = machineBusy(over: 1)
    }
    return busy
}
