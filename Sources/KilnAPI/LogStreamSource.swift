import Foundation
import KilnCore
import KilnLogs
import KilnEngine
import KilnStore
import KilnHTTP

/// One SSE stream of a workload's log: what its `LogCursor` reads (stored lines from the
/// chosen start, then live lines), then `event: end`, formatted here (text streams take
/// the broker's ready-made frames). Pulled by the daemon; it never buffers more than one
/// read's worth of bytes plus one line. When the store cannot be read, the stream ends
/// with `event: error` instead of `end`, so that the client resumes from its last line.
final class LogStreamSource: HTTPStreamSource, @unchecked Sendable {
    enum Format { case text, json }
    /// Seqs never get near this; it keeps cursor arithmetic far from overflow.
    static let maxSeq: Int64 = 1 << 53
    /// Lines taken from the broker or the store per read, at most this many bytes of text
    /// (plus one line): with the daemon's buffer this bounds a stalled client well under 1 MiB.
    static let readBudget = 256 * 1024

    let format: Format
    let hub: HeartbeatHub
    let counter: SubscriberCount
    let tenant: String
    /// Holds the stream's position; read only from `read`, which the daemon calls one at a
    /// time per stream.
    private let reader: LogCursor
    private var pending: [LogLine] = []
    private var pendingIndex = 0
    private var ended = false
    // Guarded by `lock`: shared with the heartbeat and waker threads.
    private let lock = NSLock()
    private var waker: (@Sendable () -> Void)?
    private var heartbeatDue = false
    private var closed = false
    private var attached = false

    init(reader: LogCursor, format: Format, hub: HeartbeatHub, counter: SubscriberCount, tenant: String) {
        self.tenant = tenant
        self.reader = reader
        self.format = format
        self.hub = hub
        self.counter = counter
    }

    /// The daemon has queued the stream on its connection: from now on it is a subscriber.
    func attach(waker: @escaping @Sendable () -> Void) {
        lock.lock()
        self.waker = waker
        attached = true
        lock.unlock()
        counter.add(1, tenant: tenant)
        reader.setWaker(waker)
        hub.add(self)
    }

    /// Called by the heartbeat hub: the next read sends a keep-alive comment.
    func heartbeat() {
        lock.lock()
        heartbeatDue = true
        let w = waker
        lock.unlock()
        w?()
    }

    func close() {
        lock.lock()
        if closed { lock.unlock(); return }
        closed = true
        waker = nil
        let counted = attached
        lock.unlock()
        reader.cancel()
        hub.remove(self)
        if counted { counter.add(-1, tenant: tenant) }
    }

    func read(max: Int) -> StreamRead {
        if ended { return .end }
        var out: [UInt8] = []
        while out.count < max {
            if pendingIndex < pending.count {
                let line = pending[pendingIndex]
                pendingIndex += 1
                LogStreamSource.appendEvent(line, format: format, to: &out)
                continue
            }
            pending.removeAll(keepingCapacity: true)
            pendingIndex = 0
            switch nextLines(max: 512, maxBytes: max - out.count) {
            case .lines(let lines):
                pending = lines
            case .frames(let bytes, _):
                // Encoded once by the broker for every subscriber.
                if out.isEmpty { out = bytes } else { out.append(contentsOf: bytes) }
            case .end(let info, let lastSeq):
                appendEnd(info, lastSeq: lastSeq, to: &out)
                ended = true
                return .bytes(out)
            case .failed(let why):
                LogStreamSource.appendError(why, to: &out)
                ended = true
                return .bytes(out)
            case .wait:
                if !out.isEmpty { return .bytes(out) }
                lock.lock()
                let beat = heartbeatDue
                heartbeatDue = false
                lock.unlock()
                if beat { return .bytes(Array(": keepalive\n\n".utf8)) }
                return .wait
            }
        }
        return .bytes(out)
    }

    /// Text streams take the broker's ready-made frames, up to `maxBytes` (at least one).
    private func nextLines(max: Int, maxBytes: Int) -> LogRead {
        format == .text
            ? reader.next(max: max, maxBytes: Swift.min(maxBytes, LogStreamSource.readBudget), framed: true)
            : reader.next(max: max, maxBytes: LogStreamSource.readBudget)
    }

    /// Ends a stream that cannot go on: not an `end`, which would claim the log is complete.
    static func appendError(_ why: String, to out: inout [UInt8]) {
        out.append(contentsOf: "event: error\ndata: ".utf8)
        JSON.object([("code", .string("storage")), ("message", .string(why))]).write(to: &out)
        out.append(contentsOf: "\n\n".utf8)
    }

    /// The SSE event of a text stream: the broker encodes each live line with it once.
    static func textFrame(_ line: LogLine) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(line.line.utf8.count + 28)
        appendEvent(line, format: .text, to: &out)
        return out
    }

    static func appendEvent(_ line: LogLine, format: Format, to out: inout [UInt8]) {
        out.append(contentsOf: "id: \(line.seq)\n".utf8)
        switch format {
        case .json:
            out.append(contentsOf: "data: ".utf8)
            line.json.write(to: &out)
            out.append(0x0A)
        case .text:
            // A CR inside a line would end the field in a browser: each CR-separated piece
            // is a further data field of the same event.
            out.append(contentsOf: "data: ".utf8)
            for byte in line.line.utf8 {
                if byte == 0x0D {
                    out.append(contentsOf: "\ndata: ".utf8)
                } else {
                    out.append(byte)
                }
            }
            out.append(0x0A)
        }
        out.append(0x0A)
    }

    private func appendEnd(_ info: EndInfo, lastSeq: Int64, to out: inout [UInt8]) {
        out.append(contentsOf: "event: end\nid: \(lastSeq)\ndata: ".utf8)
        info.json.write(to: &out)
        out.append(contentsOf: "\n\n".utf8)
    }
}

/// Wakes every open stream once per heartbeat interval, so idle streams send a keep-alive
/// comment and streams whose client vanished are found and freed. The streams are spread
/// over ten slots a tenth of the interval apart: waking 19,000 at one instant stalls the
/// daemon threads for everything else.
///
/// The streams and the timer (a DispatchSourceTimer, thread-safe but not marked
/// Sendable) are `Locked`.
final class HeartbeatHub: Sendable {
    static let slots = 10
    private struct State {
        var sources: [[ObjectIdentifier: LogStreamSource]] = Array(repeating: [:], count: HeartbeatHub.slots)
        var slotOf: [ObjectIdentifier: Int] = [:]
        var nextSlot = 0
        var tick = 0
    }
    private let state = Locked(State())
    private let timer: Locked<any DispatchSourceTimer>

    init(intervalSeconds: Int) {
        let step = max(1, intervalSeconds * 1000 / HeartbeatHub.slots)
        let t = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kiln.heartbeat"))
        timer = Locked(t)
        t.schedule(deadline: .now() + .milliseconds(step), repeating: .milliseconds(step), leeway: .milliseconds(20))
        t.setEventHandler { [weak self] in self?.beat() }
        t.resume()
    }

    deinit { timer.withLock { $0.cancel() } }

    func add(_ source: LogStreamSource) {
        state.withLock { s in
            let slot = s.nextSlot
            s.nextSlot = (s.nextSlot + 1) % HeartbeatHub.slots
            s.sources[slot][ObjectIdentifier(source)] = source
            s.slotOf[ObjectIdentifier(source)] = slot
        }
    }

    func remove(_ source: LogStreamSource) {
        state.withLock { s in
            if let slot = s.slotOf.removeValue(forKey: ObjectIdentifier(source)) {
                s.sources[slot][ObjectIdentifier(source)] = nil
            }
        }
    }

    private func beat() {
        let due = state.withLock { s in
            defer { s.tick = (s.tick + 1) % HeartbeatHub.slots }
            return Array(s.sources[s.tick].values)
        }
        for source in due { source.heartbeat() }
    }
}
