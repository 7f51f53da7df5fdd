import NIOConcurrencyHelpers

/// One log line of a workload, numbered from 1 without gaps.
struct LogLine: Sendable {
    enum Stream: Sendable { case stdout, stderr }
    var seq: Int64
    var stream: Stream
    /// Milliseconds since the epoch, when the line was read.
    var tsMs: Int64
    var text: String
}

/// What an `end` event carries: `{"status", "exit_code", "error", "log_lines"}`.
struct EndInfo: Sendable {
    var status: WorkloadStatus
    var exitCode: Int?
    var error: String?
    var logLines: Int64
}

/// What a subscriber reads next.
enum LogRead: Sendable {
    case lines([LogLine])
    /// Nothing new: the subscriber is woken when something arrives.
    case wait
    /// The workload ended and every line up to `lastSeq` was read.
    case end(EndInfo, lastSeq: Int64)
    /// The subscriber fell behind the in-memory window: its lines are gone.
    case lagged
}

/// The in-memory log of one workload: a bounded window of its latest lines, read by
/// cursor. Publishing appends and wakes the subscribers that were waiting; it never
/// waits for one. Memory does not grow with the number of subscribers.
final class WorkloadLog: @unchecked Sendable {
    let id: String
    private let windowLines: Int
    private let windowBytes: Int
    // Everything below is guarded by `lock`.
    private let lock = NIOLock()
    private var window: [LogLine] = []
    private var head = 0
    private var bytes = 0
    private var lastSeq: Int64 = 0
    private var end: EndInfo?
    private var waiters: [ObjectIdentifier: Subscriber] = [:]

    init(id: String, windowLines: Int, windowBytes: Int) {
        self.id = id
        self.windowLines = max(1, windowLines)
        self.windowBytes = max(1, windowBytes)
    }

    private static func size(_ l: LogLine) -> Int { l.text.utf8.count + 64 }

    /// The first seq still in memory (lastSeq + 1 when the window is empty).
    private var firstSeq: Int64 { head < window.count ? window[head].seq : lastSeq + 1 }

    /// Seq of the last line published so far, and of the first one still in memory.
    var bounds: (first: Int64, last: Int64, ended: Bool) {
        lock.withLock { (firstSeq, lastSeq, end != nil) }
    }

    /// Appends lines (seqs follow the last one) and wakes waiting subscribers.
    func append(_ lines: [LogLine]) {
        guard let last = lines.last else { return }
        let toWake: [Subscriber] = lock.withLock {
            if end != nil { return [] }
            window.append(contentsOf: lines)
            for l in lines { bytes += WorkloadLog.size(l) }
            lastSeq = last.seq
            trim()
            let w = Array(waiters.values)
            waiters.removeAll(keepingCapacity: true)
            return w
        }
        for s in toWake { s.wake() }
    }

    /// Ends the log: subscribers read what is left, then `end`.
    func close(_ info: EndInfo) {
        let toWake: [Subscriber] = lock.withLock {
            if end != nil { return [] }
            end = info
            let w = Array(waiters.values)
            waiters.removeAll()
            return w
        }
        for s in toWake { s.wake() }
    }

    /// Keeps at most `windowLines` lines and about `windowBytes` bytes; compacts now and then.
    private func trim() {
        while window.count - head > windowLines || (bytes > windowBytes && window.count - head > 1) {
            bytes -= WorkloadLog.size(window[head])
            head += 1
        }
        if head >= 1024 && head * 2 > window.count {
            window.removeFirst(head)
            head = 0
        }
    }

    /// Lines after `cursor` (at most `max`, about `maxBytes`); `end` once everything was read;
    /// else registers `waiter` to be woken by the next append or the end.
    func read(after cursor: Int64, max: Int, maxBytes: Int, waiter: Subscriber) -> LogRead {
        lock.withLock {
            let first = firstSeq
            if cursor < first - 1 { return .lagged }
            if cursor < lastSeq {
                let start = head + Int(cursor - first + 1)
                var stop = start
                var n = 0
                while stop < window.count && stop - start < max && n < maxBytes {
                    n += WorkloadLog.size(window[stop])
                    stop += 1
                }
                return .lines(Array(window[start..<stop]))
            }
            if let end { return .end(end, lastSeq: lastSeq) }
            waiters[ObjectIdentifier(waiter)] = waiter
            return .wait
        }
    }

    func removeWaiter(_ s: Subscriber) {
        lock.withLock { waiters[ObjectIdentifier(s)] = nil }
    }
}

/// One SSE stream's wake-up signal: its task sleeps in `wait()` until a line, the end, a
/// heartbeat, shutdown or cancellation wakes it. A wake that arrives while it is not
/// waiting is kept, so none is lost.
final class Subscriber: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NIOLock()
    private var continuation: CheckedContinuation<Void, Never>?
    private var woken = false
    private var heartbeatDue = false
    private var stopped = false

    func wake() {
        let c: CheckedContinuation<Void, Never>? = lock.withLock {
            if let c = continuation {
                continuation = nil
                return c
            }
            woken = true
            return nil
        }
        c?.resume()
    }

    /// Called by the heartbeat hub: the stream sends a keep-alive comment if it has nothing else.
    func heartbeat() {
        lock.withLock { heartbeatDue = true }
        wake()
    }

    /// The stream should end (server shutdown or task cancelled).
    func stop() {
        lock.withLock { stopped = true }
        wake()
    }

    var isStopped: Bool { lock.withLock { stopped } }

    func takeHeartbeat() -> Bool {
        lock.withLock {
            defer { heartbeatDue = false }
            return heartbeatDue
        }
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now: Bool = lock.withLock {
                    if woken || stopped {
                        woken = false
                        return true
                    }
                    continuation = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            self.stop()
        }
    }
}

/// Wakes every open stream once per heartbeat interval, spread over ten slots a tenth of
/// the interval apart (as Kiln does), so idle streams send `: keepalive` and streams whose
/// client vanished find out on the failed write.
final class HeartbeatHub: @unchecked Sendable {
    static let slots = 10
    let intervalSeconds: Int
    private let lock = NIOLock()
    private var slots: [[ObjectIdentifier: Subscriber]] = Array(repeating: [:], count: HeartbeatHub.slots)
    private var slotOf: [ObjectIdentifier: Int] = [:]
    private var nextSlot = 0
    private var tick = 0

    init(intervalSeconds: Int) {
        self.intervalSeconds = max(1, intervalSeconds)
    }

    func add(_ s: Subscriber) {
        lock.withLock {
            slots[nextSlot][ObjectIdentifier(s)] = s
            slotOf[ObjectIdentifier(s)] = nextSlot
            nextSlot = (nextSlot + 1) % HeartbeatHub.slots
        }
    }

    func remove(_ s: Subscriber) {
        lock.withLock {
            if let slot = slotOf.removeValue(forKey: ObjectIdentifier(s)) { slots[slot][ObjectIdentifier(s)] = nil }
        }
    }

    /// Runs until the task is cancelled.
    func run() async {
        let step = Duration.milliseconds(max(1, intervalSeconds * 1000 / HeartbeatHub.slots))
        let clock = ContinuousClock()
        var next = clock.now + step
        while !Task.isCancelled {
            do { try await clock.sleep(until: next) } catch { return }
            next += step
            let due: [Subscriber] = lock.withLock {
                defer { tick = (tick + 1) % HeartbeatHub.slots }
                return Array(slots[tick].values)
            }
            for s in due { s.heartbeat() }
        }
    }
}

/// Live SSE streams (`sse_subscribers` in /v1/stats).
final class SubscriberCount: Sendable {
    private let n = NIOLockedValueBox(0)
    func add(_ d: Int) { n.withLockedValue { $0 += d } }
    var value: Int { n.withLockedValue { $0 } }
}
