import Foundation
import KilnBackends
import KilnCore
import KilnLogs
import Metrics

/// Numbers lines, publishes them at once, and hands them to the store in batches.
final class EngineLogWriter: LogWriter {
    let id: String
    unowned let engine: Engine
    /// Once it says `.storage` (a batch was refused), further output is read and discarded:
    /// what waits for the store stays what was read before.
    let cancellation: Cancellation
    private(set) var lastSeq: Int64 = 0
    private var out = LineSplitter()
    private var err = LineSplitter()
    private var batch: [LogLine] = []
    private var fresh: [LogLine] = []
    private var lastFlush = DispatchTime.now().uptimeNanoseconds
    private(set) var stdout: [UInt8] = []
    private(set) var stdoutTruncated = false
    /// Bytes of line text kept so far, against the engine's `maxLogBytes`.
    private var logBytes = 0
    /// The log limit was reached: one marker line was kept, and nothing after it.
    private(set) var logTruncated = false
    private var now: Int64 = 0
    static let batchLines = 512
    static let batchNanos: UInt64 = 20_000_000

    init(id: String, engine: Engine, cancellation: Cancellation) {
        self.id = id
        self.engine = engine
        self.cancellation = cancellation
    }

    func write(_ stream: LogStream, _ bytes: [UInt8]) {
        if cancellation.reason == .storage { return }
        now = Millis.now()
        if stream == .stdout {
            let room = OutputCapture.limit - stdout.count
            if bytes.count <= room {
                stdout.append(contentsOf: bytes)
            } else {
                stdout.append(contentsOf: bytes.prefix(room))
                stdoutTruncated = true
            }
            out.feed(bytes) { add(.stdout, $0) }
        } else {
            err.feed(bytes) { add(.stderr, $0) }
        }
        publishFresh()
    }

    func writeLine(_ stream: LogStream, _ line: String) {
        if cancellation.reason == .storage { return }
        now = Millis.now()
        var splitter = LineSplitter()
        splitter.feed(Array(line.utf8)) { add(stream, $0) }
        splitter.finish { add(stream, $0) }
        publishFresh()
    }

    func tick() {
        if !batch.isEmpty, DispatchTime.now().uptimeNanoseconds - lastFlush >= EngineLogWriter.batchNanos {
            flush()
        }
    }

    func finish() {
        now = Millis.now()
        out.finish { add(.stdout, $0) }
        err.finish { add(.stderr, $0) }
        publishFresh()
        flush(last: true)
    }

    /// Keeps a line, unless the workload's log is over its limit: the line that would
    /// cross it becomes the marker, and later ones are dropped (the backend keeps reading
    /// them, so the workload runs on).
    private func add(_ stream: LogStream, _ text: String) {
        guard !logTruncated else { return }
        let size = text.utf8.count
        if logBytes + size > engine.config.maxLogBytes {
            logTruncated = true
            keep(.stderr, "kiln: log limit of \(engine.config.maxLogBytes) bytes reached; further output discarded")
            return
        }
        logBytes += size
        keep(stream, text)
    }

    private func keep(_ stream: LogStream, _ text: String) {
        lastSeq += 1
        let line = LogLine(seq: lastSeq, stream: stream, ts: now, line: text)
        fresh.append(line)
        batch.append(line)
        // A batch is one turn of the store's writer: kept to `batchLines` even when one read
        // of the pipe holds many more lines (64 KiB of `seq` output is 10,000), so that
        // other workloads' writes wait for a short batch, not a long one.
        if batch.count >= EngineLogWriter.batchLines { publishFresh() }
    }

    private func publishFresh() {
        guard !fresh.isEmpty else { return }
        engine.broker.publish(id, fresh)
        fresh.removeAll(keepingCapacity: true)
        if batch.count >= EngineLogWriter.batchLines { flush() } else { tick() }
    }

    private func flush(last: Bool = false) {
        lastFlush = DispatchTime.now().uptimeNanoseconds
        guard !batch.isEmpty else { return }
        engine.persist(id, batch, last: last)
        batch = []
    }
}
