import Foundation
import KilnCore

/// What a subscriber reads next.
public enum LogRead: Sendable {
    case lines([LogLine])
    /// Consecutive lines already encoded by the broker's `frame` encoder, up to `lastSeq`.
    case frames([UInt8], lastSeq: Int64)
    /// Nothing new; the waker registered with the subscription will be called.
    case wait
    /// The workload ended and every line up to `lastSeq` was delivered.
    case end(EndInfo, lastSeq: Int64)
    /// The store could not be read: the reader must stop here, without an `end` (which
    /// would claim lines it never got), so that its client resumes from its last line.
    case failed(String)
}

/// Encodes a line once for every subscriber (an SSE event, say).
public typealias LogFrameEncoder = @Sendable (LogLine) -> [UInt8]

/// Reads stored lines for a reader behind the in-memory window, or of a finished workload.
public typealias LogHistory = @Sendable (_ workloadID: String, _ after: Int64, _ limit: Int) throws -> [LogLine]

/// The end of a workload whose live log is gone, from its stored record: nil while it is
/// not terminal (submitted but not yet open in the broker).
public typealias LogEnding = @Sendable (_ workloadID: String) throws -> EndInfo?

/// Keeps a batch of lines within a byte budget (always at least one line).
public enum LogBudget {
    public static func trim(_ lines: [LogLine], to bytes: Int) -> [LogLine] {
        var total = 0
        var n = 0
        for l in lines {
            total += l.line.utf8.count + 32
            n += 1
            if total >= bytes { break }
        }
        return n == lines.count ? lines : Array(lines.prefix(n))
    }
}

/// One ordered log per live workload, numbered by seq, with a cursor per subscriber.
///
/// With a store behind it (`history`), the stored log is the truth (SPEC §4): a published
/// line waits in the window, already encoded, and readers see it only once
/// `markPersisted` says it is stored, so no client ever holds a line that a crash could
/// take from the store. Without one (tests), published lines are visible at once.
///
/// Publishing never blocks on a subscriber: it appends to the workload's window and
/// calls the wakers of the subscribers that were waiting. Memory does not grow with
/// the number of subscribers; a subscriber that falls behind the window (lines already
/// persisted and evicted) catches up from the store through `history`.
public final class LogBroker: Sendable {
    private let logs = Locked<[String: WorkloadLog]>([:])
    private let history: LogHistory?
    private let ending: LogEnding?
    private let frame: LogFrameEncoder?
    /// Where readers' store reads run (nil: inline, on the reader's thread).
    let storeReads: WorkRunner?
    let windowLines: Int

    let windowBytes: Int

    /// - Parameters:
    ///   - windowLines: persisted lines kept in memory per workload for fast readers.
    ///   - windowBytes: and at most this many bytes of them.
    ///   - history: where lines older than the window, and those of finished workloads,
    ///     are read from.
    ///   - ending: the stored end of a workload that has no live log.
    ///   - frame: encodes each line once as it is published; subscribers that ask for
    ///     frames get copies of these bytes instead of encoding every line themselves
    ///     (at 1,000 subscribers that is 999 encodings saved per line).
    ///   - storeReads: runs readers' `history` and `ending` reads off their threads (a
    ///     reader gets `.wait` and its waker once the answer is in); nil runs them inline.
    public init(windowLines: Int = 65_536, windowBytes: Int = 8 << 20, history: LogHistory? = nil,
                ending: LogEnding? = nil, frame: LogFrameEncoder? = nil, storeReads: WorkRunner? = nil) {
        self.windowLines = max(1, windowLines)
        self.windowBytes = max(1, windowBytes)
        self.history = history
        self.ending = ending
        self.frame = frame
        self.storeReads = storeReads
    }

    /// Starts the log of a workload (idempotent). `after`: the lines up to it are already
    /// stored (a log that mirrors one another node writes, opened mid-run): readers read
    /// them from the store, and publishing goes on from `after + 1`.
    @discardableResult
    public func open(_ id: String, after: Int64 = 0) -> WorkloadLog {
        logs.withLock { logs in
            if let log = logs[id] { return log }
            let log = WorkloadLog(id: id, windowLines: windowLines, windowBytes: windowBytes, history: history, frame: frame,
                                  storeReads: storeReads, after: after)
            logs[id] = log
            return log
        }
    }

    public func log(_ id: String) -> WorkloadLog? {
        logs.withLock { $0[id] }
    }

    /// Appends lines (their seqs must follow the last one) and wakes waiting subscribers.
    /// Lines published to a workload that is not open are dropped.
    public func publish(_ id: String, _ lines: [LogLine]) {
        log(id)?.append(lines)
    }

    public func publish(_ id: String, _ line: LogLine) {
        publish(id, [line])
    }

    /// Lines up to `seq` are in the store: readers may have them, and they may leave memory.
    public func markPersisted(_ id: String, upTo seq: Int64) {
        log(id)?.markPersisted(upTo: seq)
    }

    /// Ends the log: every subscriber reads what is left, then `end`.
    public func close(_ id: String, end: EndInfo) {
        let log = logs.withLock { $0.removeValue(forKey: id) }
        log?.close(end)
    }

    /// Ends every open log (server shutdown); `end` gets the id and the last seq. Where it
    /// answers nil (a workload that goes on elsewhere), readers stop after the lines they
    /// have, with no `end`, and their clients resume on another node.
    public func closeAll(_ end: (String, Int64) -> EndInfo?) {
        let all = logs.withLock { logs in
            defer { logs.removeAll() }
            return logs
        }
        for (id, log) in all {
            if let info = end(id, log.lastSeq) {  // the last line readers may see
                log.close(info)
            } else {
                log.abandon("this node is shutting down; the workload goes on, resume on another node")
            }
        }
    }

    /// A cursor on a live workload's log that starts after `after` (nil: only later lines).
    /// Nil when the workload has no live log (unknown or already finished).
    public func subscription(_ id: String, after: Int64?) -> LogSubscription? {
        guard let log = log(id) else { return nil }
        return LogSubscription(log: log, after: after ?? log.lastSeq)
    }

    /// A reader of a workload's whole log from `after` on, live or finished: the one
    /// catch-up path. While the workload runs it reads the live window (and the store
    /// behind it); once it is finished, the store and then the stored end.
    public func cursor(_ id: String, after: Int64) -> LogCursor {
        LogCursor(broker: self, id: id, after: after)
    }

    func storedLines(_ id: String, after: Int64, limit: Int) throws -> [LogLine]? {
        try history?(id, after, limit)
    }

    func storedEnd(_ id: String) throws -> EndInfo? {
        try ending?(id)
    }

    /// Number of live logs (for tests and stats).
    public var openCount: Int { logs.withLock { $0.count } }
}

/// The in-memory log of one live workload.
public final class WorkloadLog: @unchecked Sendable {
    public let id: String
    // All guarded by `lock`.
    private let lock = NSLock()
    private var window: [LogLine] = []
    /// `frame(window[i])`, when there is an encoder.
    private var frames: [[UInt8]] = []
    private var head = 0
    private(set) var lastSeqValue: Int64 = 0
    private var persisted: Int64 = 0
    /// The last line readers may see: `persisted` with a store behind, else `lastSeqValue`.
    private var visible: Int64 = 0
    private var end: EndInfo?
    /// Set when readers must stop without an end (`abandon`).
    private var abandoned: String?
    private var waiters: [ObjectIdentifier: @Sendable () -> Void] = [:]
    private var liveBytes = 0
    private let windowLines: Int
    private let windowBytes: Int
    let history: LogHistory?
    let frame: LogFrameEncoder?
    let storeReads: WorkRunner?

    init(id: String, windowLines: Int, windowBytes: Int, history: LogHistory?, frame: LogFrameEncoder? = nil,
         storeReads: WorkRunner? = nil, after: Int64 = 0) {
        self.id = id
        lastSeqValue = max(0, after)
        persisted = lastSeqValue
        visible = lastSeqValue
        self.windowLines = windowLines
        self.windowBytes = windowBytes
        self.history = history
        self.frame = frame
        self.storeReads = storeReads
    }

    /// A line's size in a read's byte budget: its text and record.
    private static func size(_ l: LogLine) -> Int { l.line.utf8.count + 64 }

    /// What a line costs the window in memory: its size, plus its frame when there is one.
    private func memory(_ l: LogLine) -> Int {
        WorkloadLog.size(l) + (frame == nil ? 0 : l.line.utf8.count + 48)
    }

    /// The last line readers may see (with a store behind: the last stored line).
    public var lastSeq: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return visible
    }

    func append(_ lines: [LogLine]) {
        guard let first = lines.first else { return }
        // Encoded by the publisher, outside the lock.
        let encoded = frame.map { lines.map($0) }
        lock.lock()
        if end != nil { lock.unlock(); return }
        // Lines it already has are dropped: a mirrored log may be fed the same stored lines
        // twice (a resync racing an announcement, or its own writer and the feed at once).
        if first.seq <= lastSeqValue {
            let known = lastSeqValue
            lock.unlock()
            let rest = lines.filter { $0.seq > known }
            if !rest.isEmpty { append(rest) }
            return
        }
        window.append(contentsOf: lines)
        if let encoded { frames.append(contentsOf: encoded) }
        for l in lines { liveBytes += memory(l) }
        lastSeqValue = lines.last!.seq
        guard history == nil else {
            // Seen once stored (`markPersisted`), unless the store was quicker than this.
            guard min(persisted, lastSeqValue) > visible else {
                trim()
                lock.unlock()
                return
            }
            visible = min(persisted, lastSeqValue)
            trim()
            wakeWaiters()
            return
        }
        visible = lastSeqValue
        wakeWaiters()
    }

    func markPersisted(upTo seq: Int64) {
        lock.lock()
        persisted = max(persisted, seq)
        let advanced = min(persisted, lastSeqValue) > visible
        if advanced { visible = min(persisted, lastSeqValue) }
        trim()
        guard advanced else { lock.unlock(); return }
        wakeWaiters()
    }

    /// Unlocks, then wakes whoever waited for lines. Caller holds `lock`.
    private func wakeWaiters() {
        let toWake = waiters
        waiters.removeAll(keepingCapacity: true)
        lock.unlock()
        // On the publishing (or storing) thread, on purpose: a wake only flags or resumes a
        // connection (libmicrohttpd does the sending). Handing the wakes to a serial queue
        // instead was measured slower: B1 R=max 2.51 -> 2.11 M events/s, S=10000 p99 479 -> 570 ms.
        for wake in toWake.values { wake() }
    }

    /// Drops persisted lines beyond the window (in lines or bytes). Unpersisted lines always
    /// stay. Evicted lines are freed soon (amortized compaction). Caller holds `lock`.
    private func trim() {
        guard history != nil else { return }
        var live = window.count - head
        while (live > windowLines || liveBytes > windowBytes), head < window.count, window[head].seq <= persisted {
            liveBytes -= memory(window[head])
            head += 1
            live -= 1
        }
        if head >= 64 && head * 2 > window.count {
            window.removeFirst(head)
            if !frames.isEmpty { frames.removeFirst(head) }
            head = 0
        }
    }

    /// Readers stop (`.failed`) once they have what is visible: no `end`, since it has not
    /// ended.
    func abandon(_ reason: String) {
        lock.lock()
        if end != nil || abandoned != nil { lock.unlock(); return }
        abandoned = reason
        let toWake = waiters
        waiters.removeAll()
        lock.unlock()
        for wake in toWake.values { wake() }
    }

    func close(_ info: EndInfo) {
        lock.lock()
        if end != nil { lock.unlock(); return }
        end = info
        let toWake = waiters
        waiters.removeAll()
        lock.unlock()
        for wake in toWake.values { wake() }
    }

    /// Lines after `cursor`, up to `max` and about `maxBytes`; registers `waiter` when there are none.
    /// With `framed` (and an encoder), lines in the window come as one run of frames of at
    /// most `maxBytes` (at least one frame). Lines behind the window come from the store
    /// through `storeRead` (`.wait` until its answer is in).
    func read(after cursor: Int64, max: Int, maxBytes: Int, framed: Bool = false,
              waiter: ObjectIdentifier, wake: (@Sendable () -> Void)?, storeRead: PendingStoreRead? = nil) -> LogRead {
        lock.lock()
        let firstInWindow = head < window.count ? window[head].seq : lastSeqValue + 1
        // Only what readers may see: stored lines, when a store is behind.
        let seen = visible
        if cursor < firstInWindow - 1, let history {
            lock.unlock()
            // Behind the window: these lines are persisted.
            let id = self.id, limit = Swift.min(max, 256, Int(firstInWindow - 1 - cursor))
            let outcome = (storeRead ?? PendingStoreRead(runner: nil)).ask(.lines(after: cursor), wake: wake ?? {}) {
                .lines(try history(id, cursor, limit))
            }
            switch outcome {
            case .pending:
                return .wait
            case .failed(let why):
                return .failed("cannot read stored lines of \(id): \(why)")
            case .answered(.lines(let lines?)) where !lines.isEmpty:
                return .lines(LogBudget.trim(lines, to: maxBytes))
            case .answered:
                // The store did not answer: never skip ahead to the window; try again later.
                if let wake { DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) { wake() } }
                return .wait
            }
        }
        if cursor < seen, head < window.count {
            // Seqs in the window are contiguous: index arithmetic finds the cursor.
            let offset = cursor < window[head].seq ? 0 : Int(cursor - window[head].seq + 1)
            let start = head + offset
            if start < window.count, framed, frame != nil {
                var out = frames[start]
                var stop = start + 1
                while stop < window.count && window[stop].seq <= seen && stop - start < max && out.count + frames[stop].count <= maxBytes {
                    out.append(contentsOf: frames[stop])
                    stop += 1
                }
                let last = window[stop - 1].seq
                lock.unlock()
                return .frames(out, lastSeq: last)
            }
            if start < window.count {
                var stop = start
                var bytes = 0
                while stop < window.count && window[stop].seq <= seen && stop - start < max && bytes < maxBytes {
                    bytes += WorkloadLog.size(window[stop])
                    stop += 1
                }
                let lines = Array(window[start..<stop])
                lock.unlock()
                return .lines(lines)
            }
        }
        if let end, cursor >= seen {
            lock.unlock()
            return .end(end, lastSeq: seen)
        }
        if let abandoned, cursor >= seen {
            lock.unlock()
            return .failed(abandoned)
        }
        if let wake { waiters[waiter] = wake }
        lock.unlock()
        return .wait
    }

    func removeWaiter(_ waiter: ObjectIdentifier) {
        lock.lock()
        waiters[waiter] = nil
        lock.unlock()
    }

    var waiterCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return waiters.count
    }
}

/// A subscriber's cursor. Read it from one thread at a time.
///
/// `@unchecked Sendable`: `cursor` is touched only by the single reader (the daemon calls a
/// stream's reads one at a time); `waker` and `cancelled` are guarded by `lock`. (An NSLock
/// on this per-read path: with `Synchronization.Mutex` here and in `LogCursor`, B1's p99
/// went from 27 ms to 250 ms; see benchmarks/results-notes.md.)
public final class LogSubscription: @unchecked Sendable {
    public let log: WorkloadLog
    public private(set) var cursor: Int64
    private let lock = NSLock()
    private var waker: (@Sendable () -> Void)?
    private var cancelled = false
    private let storeRead: PendingStoreRead

    init(log: WorkloadLog, after: Int64) {
        self.log = log
        self.cursor = after
        self.storeRead = PendingStoreRead(runner: log.storeReads)
    }

    /// The closure called (from any thread) when `next` answered `.wait` and something arrived.
    public func setWaker(_ waker: @escaping @Sendable () -> Void) {
        lock.lock()
        self.waker = waker
        lock.unlock()
    }

    /// The next lines; with `framed`, lines still in the window come encoded (`.frames`).
    public func next(max: Int = 512, maxBytes: Int = 1 << 20, framed: Bool = false) -> LogRead {
        lock.lock()
        let wake = cancelled ? nil : waker
        lock.unlock()
        let result = log.read(after: cursor, max: max, maxBytes: maxBytes, framed: framed,
                              waiter: ObjectIdentifier(self), wake: wake, storeRead: storeRead)
        switch result {
        case .lines(let lines): if let last = lines.last { cursor = last.seq }
        case .frames(_, let last): cursor = last
        case .wait, .end, .failed: break
        }
        return result
    }

    /// Unsubscribes: no waker is called after this returns.
    public func cancel() {
        lock.lock()
        cancelled = true
        waker = nil
        lock.unlock()
        log.removeWaiter(ObjectIdentifier(self))
    }
}
