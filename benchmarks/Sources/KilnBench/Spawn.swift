import Foundation

/// posix_spawn of argv[0] with argv; stdout to `stdoutFD` when given. Returns the pid.
func spawn(_ argv: [String], stdoutFD: Int32? = nil, closeFD: Int32? = nil) throws -> pid_t {
    var pid: pid_t = 0
    var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
    cargs.append(nil)
    defer { for p in cargs { free(p) } }
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    if let fd = stdoutFD {
        posix_spawn_file_actions_adddup2(&fa, fd, 1)
        posix_spawn_file_actions_addclose(&fa, fd)
    }
    if let fd = closeFD { posix_spawn_file_actions_addclose(&fa, fd) }
    let rc = posix_spawn(&pid, argv[0], &fa, nil, cargs, environ)
    if rc != 0 { throw WireError("posix_spawn \(argv[0]): \(String(cString: strerror(rc)))") }
    return pid
}

@discardableResult
func waitExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}

/// `sh -c true` spawned and waited for, `count` times on `concurrency` threads:
/// per-run latencies (ms) and the wall time (s).
func rawSpawnRuns(count: Int, concurrency: Int) -> (latencies: [Double], wall: Double) {
    let all = Locked<[Double]>([])
    let g = DispatchGroup()
    let t0 = monoNs()
    for t in 0..<concurrency {
        let n = count / concurrency + (t < count % concurrency ? 1 : 0)
        g.enter()
        Thread {
            var mine: [Double] = []
            mine.reserveCapacity(n)
            for _ in 0..<n {
                let s = monoNs()
                if let pid = try? spawn(["/bin/sh", "-c", "true"]) { waitExit(pid) }
                mine.append(ms(monoNs() - s))
            }
            all.withLock { $0 += mine }
            g.leave()
        }.start()
    }
    g.wait()
    return (all.withLock { $0 }, Double(monoNs() - t0) / 1e9)
}

/// `seq N` through a pipe into this process, every line counted: seconds and line count.
func rawSeqThroughPipe(_ n: Int) throws -> (seconds: Double, lines: Int) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw WireError("pipe failed") }
    let t0 = monoNs()
    let pid = try spawn(["/usr/bin/seq", String(n)], stdoutFD: fds[1], closeFD: fds[0])
    close(fds[1])
    var buf = [UInt8](repeating: 0, count: 65536)
    var lines = 0
    while true {
        let r = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, 65536) }
        if r < 0 && errno == EINTR { continue }
        if r <= 0 { break }
        for i in 0..<r where buf[i] == 0x0A { lines += 1 }
    }
    close(fds[0])
    waitExit(pid)
    return (Double(monoNs() - t0) / 1e9, lines)
}
