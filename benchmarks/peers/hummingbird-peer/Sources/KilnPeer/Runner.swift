import Foundation
import NIOConcurrencyHelpers

enum WorkloadStatus: String, Sendable, Encodable {
    case queued, running, completed, failed

    var isTerminal: Bool { self == .completed || self == .failed }
}

enum Runtime: String, Sendable, Codable {
    case python, shell
}

/// A workload's record, as `GET /v1/workloads/{id}` returns it.
struct WorkloadRecord: Sendable {
    var id: String
    var runtime: Runtime
    var status: WorkloadStatus = .queued
    var exitCode: Int?
    var error: String?
    var logLines: Int64 = 0
    var createdMs: Int64
    var startedMs: Int64?
    var finishedMs: Int64?

    var durationMs: Int64? {
        guard let s = startedMs, let f = finishedMs else { return nil }
        return f - s
    }
}

func nowMs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// Starts workloads as child processes (at most `maxConcurrent` at once, the rest queued),
/// reads their stdout and stderr into lines and publishes them to each workload's log.
/// Records and logs live in memory only.
final class Runner: @unchecked Sendable {
    let maxConcurrent: Int
    let windowLines: Int
    let windowBytes: Int
    // Guarded by `lock`.
    private let lock = NIOLock()
    private var records: [String: WorkloadRecord] = [:]
    private var logs: [String: WorkloadLog] = [:]
    private var queue: [(String, String)] = []   // (id, code) waiting for a slot
    private var running: [String: pid_t] = [:]
    private var shuttingDown = false
    private var counter: UInt64 = 0

    init(maxConcurrent: Int, windowLines: Int, windowBytes: Int) {
        self.maxConcurrent = max(1, maxConcurrent)
        self.windowLines = windowLines
        self.windowBytes = windowBytes
    }

    func record(_ id: String) -> WorkloadRecord? { lock.withLock { records[id] } }
    func log(_ id: String) -> WorkloadLog? { lock.withLock { logs[id] } }

    var counts: [String: Int] {
        lock.withLock {
            var c: [String: Int] = ["total": records.count]
            for r in records.values { c[r.status.rawValue, default: 0] += 1 }
            return c
        }
    }

    /// Registers a workload and starts it now or when a slot frees up.
    func submit(runtime: Runtime, code: String) -> WorkloadRecord {
        let (rec, start): (WorkloadRecord, Bool) = lock.withLock {
            counter += 1
            let id = String(format: "wl%011llx%05llx", UInt64(nowMs()), counter & 0xFFFFF)
            let rec = WorkloadRecord(id: id, runtime: runtime, createdMs: nowMs())
            records[id] = rec
            logs[id] = WorkloadLog(id: id, windowLines: windowLines, windowBytes: windowBytes)
            if running.count < maxConcurrent && !shuttingDown {
                running[id] = 0
                return (rec, true)
            }
            queue.append((id, code))
            return (rec, false)
        }
        if start { launch(rec.id, runtime: runtime, code: code) }
        return rec
    }

    private func launch(_ id: String, runtime: Runtime, code: String) {
        let args = runtime == .python ? ["python3", "-u", "-c", code] : ["sh", "-c", code]
        let child: SpawnedChild
        do {
            child = try SpawnedChild(args)
        } catch {
            finish(id, status: .failed, exitCode: nil, error: "spawn failed: \(error)", lines: 0)
            return
        }
        let killNow: Bool = lock.withLock {
            running[id] = child.pid
            records[id]?.status = .running
            records[id]?.startedMs = nowMs()
            return shuttingDown
        }
        if killNow { kill(-child.pid, SIGKILL) }
        guard let log = log(id) else { return }
        // One thread per running workload: blocking reads of its two pipes.
        let t = Thread { [self] in
            let lines = child.pump(into: log)
            let (code, signal) = child.waitExit()
            if let signal {
                let stopping = lock.withLock { shuttingDown }
                finish(id, status: .failed, exitCode: nil, error: stopping ? "server shutdown" : "killed by signal \(signal)", lines: lines)
            } else {
                finish(id, status: code == 0 ? .completed : .failed, exitCode: code, error: nil, lines: lines)
            }
        }
        t.stackSize = 256 * 1024
        t.start()
    }

    private func finish(_ id: String, status: WorkloadStatus, exitCode: Int?, error: String?, lines: Int64) {
        let (log, next): (WorkloadLog?, (String, String, Runtime)?) = lock.withLock {
            if var r = records[id] {
                r.status = status
                r.exitCode = exitCode
                r.error = error
                r.logLines = lines
                r.finishedMs = nowMs()
                if r.startedMs == nil { r.startedMs = r.finishedMs }
                records[id] = r
            }
            running[id] = nil
            var next: (String, String, Runtime)?
            if !shuttingDown, !queue.isEmpty {
                let (nid, code) = queue.removeFirst()
                running[nid] = 0
                next = (nid, code, records[nid]?.runtime ?? .shell)
            }
            return (logs[id], next)
        }
        log?.close(EndInfo(status: status, exitCode: exitCode, error: error, logLines: lines))
        if let next { launch(next.0, runtime: next.2, code: next.1) }
    }

    /// Server shutdown: kills every running workload (its process group) and fails the queued ones.
    func shutdown() {
        let (pids, queued): ([pid_t], [(String, String)]) = lock.withLock {
            if shuttingDown { return ([], []) }
            shuttingDown = true
            let q = queue
            queue.removeAll()
            return (Array(running.values.filter { $0 > 0 }), q)
        }
        for p in pids { kill(-p, SIGKILL) }
        for (id, _) in queued { finish(id, status: .failed, exitCode: nil, error: "server shutdown", lines: 0) }
        // The killed workloads' logs end as soon as their pipes close; should one not (a
        // process that left its group still holds a pipe), its streams get their end anyway.
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) { [self] in
            for log in lock.withLock({ Array(logs.values) }) {
                log.close(EndInfo(status: .failed, exitCode: nil, error: "server shutdown", logLines: log.bounds.last))
            }
        }
    }
}

struct SpawnError: Error, CustomStringConvertible {
    var description: String
}

/// A child process started with posix_spawn: stdin /dev/null, stdout and stderr on pipes, in
/// a process group of its own (so shutdown can kill it with its children), default signal
/// handling, and only PATH, HOME and LANG in its environment.
final class SpawnedChild: @unchecked Sendable {
    let pid: pid_t
    private var fds: [Int32]   // read ends: stdout, stderr

    /// Pipes are made close-on-exec and handed to the child under one lock, so a spawn on
    /// another thread never inherits this child's pipe ends (the server's sockets are
    /// close-on-exec already: SwiftNIO opens them so).
    private static let spawnLock = NIOLock()

    init(_ args: [String]) throws {
        let home = NSTemporaryDirectory()
        let env = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=\(home)", "LANG=C.UTF-8"]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attr, &noSignals)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let (pid, out, err): (pid_t, Int32, Int32) = try SpawnedChild.spawnLock.withLock {
            var out: [Int32] = [0, 0]
            var err: [Int32] = [0, 0]
            guard pipe(&out) == 0 else { throw SpawnError(description: "pipe: errno \(errno)") }
            guard pipe(&err) == 0 else {
                close(out[0]); close(out[1])
                throw SpawnError(description: "pipe: errno \(errno)")
            }
            for fd in out + err { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            var fa = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&fa)
            defer { posix_spawn_file_actions_destroy(&fa) }
            posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_adddup2(&fa, out[1], 1)
            posix_spawn_file_actions_adddup2(&fa, err[1], 2)
            var pid: pid_t = 0
            // The executable is looked up in the server's PATH.
            let rc = posix_spawnp(&pid, args[0], &fa, &attr, &argv, &envp)
            close(out[1])
            close(err[1])
            guard rc == 0 else {
                close(out[0]); close(err[0])
                throw SpawnError(description: "\(args[0]): \(String(cString: strerror(rc)))")
            }
            return (pid, out[0], err[0])
        }
        self.pid = pid
        self.fds = [out, err]
    }

    /// Reads both pipes until both close, publishing lines as they come (one publish per
    /// read). Returns the number of lines.
    func pump(into log: WorkloadLog) -> Int64 {
        var splitters = [LineSplitter(), LineSplitter()]
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let bufSize = 64 * 1024
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: bufSize, alignment: 16)
        defer { buf.deallocate() }
        var seq: Int64 = 0
        var batch: [LogLine] = []
        var open = 2
        while open > 0 {
            let r = poll(&pfds, 2, -1)
            if r < 0 {
                if errno == EINTR { continue }
                break
            }
            let ts = nowMs()
            for i in 0..<2 where pfds[i].fd >= 0 && pfds[i].revents != 0 {
                let stream: LogLine.Stream = i == 0 ? .stdout : .stderr
                let n = read(pfds[i].fd, buf.baseAddress, bufSize)
                if n > 0 {
                    splitters[i].feed(UnsafeRawBufferPointer(rebasing: buf[0..<n])) { text in
                        seq += 1
                        batch.append(LogLine(seq: seq, stream: stream, tsMs: ts, text: text))
                    }
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    splitters[i].finish { text in
                        seq += 1
                        batch.append(LogLine(seq: seq, stream: stream, tsMs: ts, text: text))
                    }
                    close(pfds[i].fd)
                    pfds[i].fd = -1
                    open -= 1
                }
            }
            if !batch.isEmpty {
                log.append(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        for p in pfds where p.fd >= 0 { close(p.fd) }
        return seq
    }

    /// Waits for the child: (exit code, nil) or (nil, signal).
    func waitExit() -> (Int?, Int32?) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return (nil, nil) }
        }
        if status & 0x7F == 0 { return (Int((status >> 8) & 0xFF), nil) }
        return (nil, status & 0x7F)
    }
}

/// Cuts output into lines as Kiln does (spec section 4): a line ends at LF; a CR just before
/// the LF, or at the very end of the output, is dropped; invalid UTF-8 becomes U+FFFD; a line
/// longer than 64 KiB is split. Output that ends without LF still ends with a line.
struct LineSplitter {
    static let maxLineBytes = 64 * 1024
    private var pending: [UInt8] = []

    mutating func feed(_ chunk: UnsafeRawBufferPointer, _ emit: (String) -> Void) {
        var start = 0
        var i = 0
        let n = chunk.count
        while i < n {
            if chunk[i] == 0x0A {
                if pending.isEmpty {
                    var end = i
                    if end > start && chunk[end - 1] == 0x0D { end -= 1 }
                    emitPiece(UnsafeRawBufferPointer(rebasing: chunk[start..<end]), emit)
                } else {
                    pending.append(contentsOf: chunk[start..<i])
                    if pending.last == 0x0D { pending.removeLast() }
                    pending.withUnsafeBytes { emitPiece($0, emit) }
                    pending.removeAll(keepingCapacity: true)
                }
                start = i + 1
            }
            i += 1
        }
        if start < n {
            pending.append(contentsOf: chunk[start..<n])
            // A line with no LF in sight: send what fits, cut at a character boundary.
            while pending.count > LineSplitter.maxLineBytes
                && !(pending.count == LineSplitter.maxLineBytes + 1 && pending.last == 0x0D) {
                var cut = LineSplitter.maxLineBytes
                var back = 0
                while back < 3, cut > 0, pending[cut] & 0xC0 == 0x80 { cut -= 1; back += 1 }
                if back == 3 || cut == 0 { cut = LineSplitter.maxLineBytes }
                pending.withUnsafeBytes { emitPiece(UnsafeRawBufferPointer(rebasing: $0[0..<cut]), emit) }
                pending.removeFirst(cut)
            }
        }
    }

    mutating func finish(_ emit: (String) -> Void) {
        guard !pending.isEmpty else { return }
        if pending.last == 0x0D { pending.removeLast() }
        pending.withUnsafeBytes { emitPiece($0, emit) }
        pending.removeAll()
    }

    private func emitPiece(_ bytes: UnsafeRawBufferPointer, _ emit: (String) -> Void) {
        let text = String(decoding: bytes, as: UTF8.self)
        if text.utf8.count <= LineSplitter.maxLineBytes {
            emit(text)
            return
        }
        // Replacement characters made it longer than the limit: split at scalar boundaries.
        var piece = String.UnicodeScalarView()
        var size = 0
        for scalar in text.unicodeScalars {
            let n = String(scalar).utf8.count
            if size + n > LineSplitter.maxLineBytes {
                emit(String(piece))
                piece = String.UnicodeScalarView()
                size = 0
            }
            piece.append(scalar)
            size += n
        }
        if !piece.isEmpty { emit(String(piece)) }
    }
}
