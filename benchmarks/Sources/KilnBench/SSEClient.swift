import Atomics
import Foundation
import Histogram
import NIOCore
import NIOPosix

enum SSEMode: String, Codable, Sendable {
    /// Data lines are "<seq> <publish time ns>": latency, loss and order per stream.
    case fanout
    /// Data lines are the numbers 1, 2, 3, … (`seq N`): loss and order per stream.
    case ingest
    /// No lines expected: keep-alive comments are counted per stream.
    case idle
}

/// Latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
func makeLatencyHistogram() -> Histogram<UInt64> {
    Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
}

/// One stream's counters; touched only on its channel's event loop.
final class StreamState: @unchecked Sendable {
    var connected = false
    var status = 0
    var inOrder = 0          // lines whose seq is above every seq seen before
    var outOfOrder = 0       // lines whose seq is not (duplicates included)
    var maxSeq: Int64 = 0
    var gaps = 0             // times a seq skipped ahead of maxSeq + 1
    var badLines = 0         // data lines that did not parse
    var heartbeats = 0       // keep-alive comments since the mark
    var lastBeatNs: UInt64 = 0
    var maxBeatGapNs: UInt64 = 0
    var ended = false        // `event: end` seen
    var closed = false
    var error: String?
    var lastRecvNs: UInt64 = 0
    var endNs: UInt64 = 0    // when `event: end` arrived
}

/// The counters of every stream on one event loop; touched only on that loop.
final class LoopStats: @unchecked Sendable {
    var hist = makeLatencyHistogram()
    var streams: [StreamState] = []
    var firstEventNs: UInt64 = 0
    var lastEventNs: UInt64 = 0
    var events = 0
    var bytes = 0
    var markNs: UInt64 = 0
}

/// Reads one SSE response: sends the GET, parses chunked framing and SSE lines.
final class SSEHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let request: [UInt8]
    let mode: SSEMode
    let stats: LoopStats
    let st: StreamState
    let onDone: @Sendable () -> Void
    let onHead: @Sendable (Int) -> Void
    private var parser = ResponseParser()
    private var lines = LineSplitter()
    private var endEvent = false
    private var now: UInt64 = 0
    private var done = false

    init(request: [UInt8], mode: SSEMode, stats: LoopStats, state: StreamState,
         onHead: @escaping @Sendable (Int) -> Void, onDone: @escaping @Sendable () -> Void) {
        self.request = request
        self.mode = mode
        self.stats = stats
        self.st = state
        self.onHead = onHead
        self.onDone = onDone
    }

    func channelActive(context: ChannelHandlerContext) {
        st.connected = true
        var buf = context.channel.allocator.buffer(capacity: request.count)
        buf.writeBytes(request)
        context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buf = unwrapInboundIn(data)
        now = realtimeNs()
        stats.bytes += buf.readableBytes
        do {
            try buf.withUnsafeReadableBytes { raw in
                _ = try parser.feed(raw) { ev in
                    switch ev {
                    case .head(let status, _):
                        self.st.status = status
                        self.onHead(status)
                        if status != 200 { throw WireError("status \(status)") }
                    case .body(let b):
                        self.lines.feed(b) { self.line($0) }
                    case .end:
                        if !self.st.ended { self.st.error = self.st.error ?? "response ended without event: end" }
                        throw StopReading()
                    }
                }
            }
        } catch is StopReading {
            context.close(promise: nil)
        } catch {
            st.error = st.error ?? "\(error)"
            context.close(promise: nil)
        }
    }

    private struct StopReading: Error {}

    @inline(__always)
    private func line(_ l: UnsafeRawBufferPointer) {
        if l.count == 0 {
            if endEvent { st.ended = true }
            return
        }
        let c0 = l[0]
        if c0 == 0x64 /* d */ && l.hasPrefix("data: ") {
            if endEvent { return }  // the end event's JSON
            var i = 6
            let seq = l.parseInt(&i)
            if seq < 0 { st.badLines += 1; return }
            switch mode {
            case .fanout:
                i += 1
                let ts = l.parseInt(&i)
                if ts > 0 {
                    let lat = now > UInt64(ts) ? (now - UInt64(ts)) / 1000 : 0
                    stats.hist.record(max(1, lat))
                } else {
                    st.badLines += 1
                }
            case .ingest, .idle:
                break
            }
            if seq > st.maxSeq {
                if seq != st.maxSeq + 1 { st.gaps += 1 }
                st.inOrder += 1
                st.maxSeq = seq
            } else {
                st.outOfOrder += 1
            }
            st.lastRecvNs = now
            stats.events += 1
            if stats.firstEventNs == 0 { stats.firstEventNs = now }
            stats.lastEventNs = now
        } else if c0 == 0x3A /* : */ {
            if stats.markNs != 0 && now >= stats.markNs {
                let since = st.lastBeatNs > stats.markNs ? st.lastBeatNs : stats.markNs
                st.maxBeatGapNs = max(st.maxBeatGapNs, now - since)
                st.heartbeats += 1
                st.lastBeatNs = now
            }
        } else if c0 == 0x65 /* e */ && l.hasPrefix("event: end") {
            endEvent = true
            st.endNs = now
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        st.closed = true
        if !done {
            done = true
            onDone()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        st.error = st.error ?? "\(error)"
        context.close(promise: nil)
    }
}

/// What one worker process reports (also the merged view across workers).
struct SSEReport: Codable, Sendable {
    var streams = 0
    var connected = 0
    var connectFailed = 0
    var non200 = 0
    var ended = 0
    var closedEarly = 0          // closed without `event: end`
    var events = 0
    var bytes = 0
    var lost = 0                 // expected lines minus lines received in order (per stream, summed)
    var outOfOrder = 0
    var gaps = 0
    var badLines = 0
    var streamsComplete = 0      // got every expected line and the end
    var firstEventNs: UInt64 = 0
    var lastEventNs: UInt64 = 0
    var lastStreamDoneNs: UInt64 = 0 // latest time a stream received its last line
    var lastEndNs: UInt64 = 0        // latest time a stream received `event: end`
    var heartbeatsMin = 0
    var heartbeatsMax = 0
    var heartbeatsTotal = 0
    var streamsWithoutHeartbeat = 0
    var maxHeartbeatGapMs = 0.0
    var errors: [String] = []
    var cpuSeconds = 0.0         // the worker processes' own CPU time (user + system)
    var hist = makeLatencyHistogram()

    mutating func merge(_ o: SSEReport) {
        let first = streams == 0
        streams += o.streams
        connected += o.connected
        connectFailed += o.connectFailed
        non200 += o.non200
        ended += o.ended
        closedEarly += o.closedEarly
        events += o.events
        bytes += o.bytes
        lost += o.lost
        outOfOrder += o.outOfOrder
        gaps += o.gaps
        badLines += o.badLines
        streamsComplete += o.streamsComplete
        if o.firstEventNs != 0 { firstEventNs = firstEventNs == 0 ? o.firstEventNs : min(firstEventNs, o.firstEventNs) }
        lastEventNs = max(lastEventNs, o.lastEventNs)
        lastStreamDoneNs = max(lastStreamDoneNs, o.lastStreamDoneNs)
        lastEndNs = max(lastEndNs, o.lastEndNs)
        heartbeatsMin = first ? o.heartbeatsMin : min(heartbeatsMin, o.heartbeatsMin)
        heartbeatsMax = max(heartbeatsMax, o.heartbeatsMax)
        heartbeatsTotal += o.heartbeatsTotal
        streamsWithoutHeartbeat += o.streamsWithoutHeartbeat
        maxHeartbeatGapMs = max(maxHeartbeatGapMs, o.maxHeartbeatGapMs)
        for e in o.errors where errors.count < 10 { errors.append(e) }
        cpuSeconds += o.cpuSeconds
        hist.add(o.hist)
    }
}

struct SSEWorkerOptions: Sendable {
    var host = "127.0.0.1"
    var port = 0
    var path = ""
    var count = 1
    var mode = SSEMode.fanout
    var expectedLines = 0
    var loops = 1
    var connectConcurrency = 256
    var deadlineSeconds = 300.0
}

/// Holds `count` SSE streams in this process. Driven by the orchestrator through stdin
/// (`mark`, `report`) and stdout (one JSON line per event).
final class SSEWorker: @unchecked Sendable {
    let opts: SSEWorkerOptions
    let group: MultiThreadedEventLoopGroup
    private var loopStats: [(EventLoop, LoopStats)] = []
    let doneCount = ManagedAtomic<Int>(0)
    let headCount = ManagedAtomic<Int>(0)
    let reportRequested = ManagedAtomic<Bool>(false)

    init(_ opts: SSEWorkerOptions) {
        self.opts = opts
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, opts.loops))
        for loop in group.makeIterator() {
            loopStats.append((loop, LoopStats()))
        }
    }

    func run() {
        raiseOpenFileLimit()
        // `path` may list several paths separated by spaces: stream i follows path i mod count
        // (R4 spreads its subscribers over many workloads from one process).
        let paths = opts.path.split(separator: " ")
        let reqs = (paths.isEmpty ? ["/"] : paths).map { path in
            Array("GET \(path) HTTP/1.1\r\nHost: \(opts.host):\(opts.port)\r\nAccept: text/event-stream\r\nUser-Agent: kiln-bench\r\n\r\n".utf8)
        }
        let permits = DispatchSemaphore(value: opts.connectConcurrency)
        let failed = ManagedAtomic<Int>(0)
        let finished = DispatchGroup()
        let firstErrors = Locked<[String]>([])
        let t0 = monoNs()
        for i in 0..<opts.count {
            let (loop, stats) = loopStats[i % loopStats.count]
            let st = StreamState()
            permits.wait()
            finished.enter()
            // Streams are registered on their loop; the handler is made there too.
            let mode = opts.mode
            let req = reqs[i % reqs.count]
            let done = doneCount
            let heads = headCount
            let f = ClientBootstrap(group: loop)
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelOption(ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 4096, maximum: 65536))
                .connectTimeout(.seconds(30))
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        stats.streams.append(st)
                        let h = SSEHandler(request: req, mode: mode, stats: stats, state: st,
                                           onHead: { _ in heads.wrappingIncrement(ordering: .relaxed) },
                                           onDone: { done.wrappingIncrement(ordering: .relaxed) })
                        try ch.pipeline.syncOperations.addHandler(h)
                    }
                }
                .connect(host: opts.host, port: opts.port)
            f.whenComplete { r in
                if case .failure(let e) = r {
                    failed.wrappingIncrement(ordering: .relaxed)
                    firstErrors.withLock { if $0.count < 5 { $0.append("connect: \(e)") } }
                }
                permits.signal()
                finished.leave()
            }
        }
        finished.wait()
        let nFailed = failed.load(ordering: .relaxed)
        let errs = firstErrors.withLock { $0 }
        emitLine(jsonLine(["event": "connected", "ok": opts.count - nFailed, "failed": nFailed,
                           "seconds": Double(monoNs() - t0) / 1e9, "errors": errs]))

        // Wait for heads a little (informational), then for commands or completion.
        let stdinThread = Thread { [self] in
            while let line = readLine() {
                let cmd = line.trimmingCharacters(in: .whitespaces)
                if cmd == "mark" {
                    let now = realtimeNs()
                    for (loop, s) in loopStats {
                        try? loop.submit { s.markNs = now }.wait()
                    }
                    emitLine(jsonLine(["event": "marked"]))
                } else if cmd == "heads" {
                    emitLine(jsonLine(["event": "heads", "heads": headCount.load(ordering: .relaxed)]))
                } else if cmd == "report" {
                    reportRequested.store(true, ordering: .relaxed)
                    return
                }
            }
            reportRequested.store(true, ordering: .relaxed)
        }
        stdinThread.start()
        let deadline = monoNs() + UInt64(opts.deadlineSeconds * 1e9)
        let target = opts.count - nFailed
        while true {
            if reportRequested.load(ordering: .relaxed) { break }
            if doneCount.load(ordering: .relaxed) >= target { break }
            if monoNs() > deadline { break }
            usleep(20_000)
        }
        var report = collect()
        report.connectFailed = nFailed
        report.errors = errs + report.errors
        var ru = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru)
        report.cpuSeconds = Double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + Double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6
        if let data = try? JSONEncoder().encode(report), let s = String(data: data, encoding: .utf8) {
            emitLine("{\"event\":\"result\",\"report\":" + s + "}")
        }
        try? group.syncShutdownGracefully()
    }

    private func collect() -> SSEReport {
        var total = SSEReport()
        let reportNs = realtimeNs()
        let expected = opts.expectedLines
        let mode = opts.mode
        for (loop, s) in loopStats {
            let r: SSEReport? = try? loop.submit { () -> SSEReport in
                var r = SSEReport()
                r.streams = s.streams.count
                r.events = s.events
                r.bytes = s.bytes
                r.firstEventNs = s.firstEventNs
                r.lastEventNs = s.lastEventNs
                r.hist = s.hist
                var hbMin = Int.max
                for st in s.streams {
                    if st.connected { r.connected += 1 }
                    if st.status != 0 && st.status != 200 { r.non200 += 1 }
                    if st.ended { r.ended += 1 }
                    if st.closed && !st.ended { r.closedEarly += 1 }
                    if mode != .idle {
                        r.lost += max(0, expected - st.inOrder)
                        if st.inOrder >= expected && st.ended { r.streamsComplete += 1 }
                    }
                    r.outOfOrder += st.outOfOrder
                    r.gaps += st.gaps
                    r.badLines += st.badLines
                    r.lastStreamDoneNs = max(r.lastStreamDoneNs, st.lastRecvNs)
                    r.lastEndNs = max(r.lastEndNs, st.endNs)
                    hbMin = min(hbMin, st.heartbeats)
                    r.heartbeatsMax = max(r.heartbeatsMax, st.heartbeats)
                    r.heartbeatsTotal += st.heartbeats
                    if st.heartbeats == 0 { r.streamsWithoutHeartbeat += 1 }
                    var gap = st.maxBeatGapNs
                    if mode == .idle && s.markNs != 0 && !st.ended {
                        // The silence since the last keep-alive (or the mark) counts too.
                        let since = max(st.lastBeatNs, s.markNs)
                        if reportNs > since { gap = max(gap, reportNs - since) }
                    }
                    r.maxHeartbeatGapMs = max(r.maxHeartbeatGapMs, Double(gap) / 1e6)
                    if let e = st.error, r.errors.count < 5 { r.errors.append(e) }
                }
                r.heartbeatsMin = hbMin == Int.max ? 0 : hbMin
                return r
            }.wait()
            if let r { total.merge(r) }
        }
        return total
    }
}

func jsonLine(_ obj: [String: Any]) -> String {
    guard let d = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else { return "{}" }
    return String(decoding: d, as: UTF8.self)
}
