import Foundation
import KilnTestSupport
import Testing
import KilnCore
import KilnHTTP
import KilnLogs
@testable import KilnAPI

/// A stream whose store fails ends with `event: error`, never with an `end` that would
/// tell the client it has every line.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct LogStreamSourceTests {
    struct StoreDown: Error {}

    @Test func aStoreErrorEndsTheStreamWithAnErrorEvent() throws {
        let broker = LogBroker(history: { _, after, _ in
            if after >= 2 { throw StoreDown() }
            return [LogLine(seq: after + 1, stream: .stdout, ts: 0, line: "l\(after + 1)")]
        }, ending: { _ in EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 5) })
        let source = LogStreamSource(reader: broker.cursor("w", after: 0), format: .text,
                                     hub: HeartbeatHub(intervalSeconds: 3600), counter: SubscriberCount(), tenant: "default")
        source.attach(waker: {})
        defer { source.close() }
        var text = ""
        reads: for _ in 0..<10 {
            switch source.read(max: 4096) {
            case .bytes(let b): text += String(decoding: b, as: UTF8.self)
            case .end, .wait: break reads
            }
        }
        #expect(text.hasPrefix("id: 1\ndata: l1\n\nid: 2\ndata: l2\n\n"), "\(text)")
        #expect(text.contains("event: error\ndata: {\"code\":\"storage\""), "\(text)")
        #expect(!text.contains("event: end"), "\(text)")
        guard case .end = source.read(max: 4096) else { Issue.record("the stream goes on after its error"); return }
    }
}
