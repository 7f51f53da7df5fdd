import Foundation
import KilnTestSupport
import Testing
import KilnCore
@testable import KilnLogs

@Suite(.timeLimit(.minutes(10)), .ownThread) struct LogBrokerTests {
    func line(_ seq: Int64, _ text: String? = nil) -> LogLine {
        LogLine(seq: seq, stream: .stdout, ts: 0, line: text ?? "line \(seq)")
    }

    /// A store holding `stored`, as the broker reads it when a subscriber is behind the window.
    func history(_ stored: [LogLine]) -> LogHistory {
        { _, after, limit in Array(stored.filter { $0.seq > after }.prefix(limit)) }
    }

    func collect(_ stream: AsyncStream<LogLine>, count: Int? = nil) async -> [LogLine] {
        var out: [LogLine] = []
        for await l in stream {
            out.append(l)
            if let count, out.count == count { break }
        }
        return out
    }

    let end = EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 3)

    @Test func oneSubscriberGetsThreeLinesInOrder() async {
        let broker = LogBroker()
        broker.open("w")
        let (lines, _) = broker.subscribe("w")
        broker.publish("w", line(1))
        broker.publish("w", line(2))
        broker.publish("w", line(3))
        broker.close("w", end: end)
        #expect(await collect(lines).map(\.seq) == [1, 2, 3])
    }

    @Test func twoSubscribersBothGetEverything() async {
        let broker = LogBroker()
        broker.open("w")
        let (a, _) = broker.subscribe("w")
        let (b, _) = broker.subscribe("w")
        broker.publish("w", (1...100).map { line($0) })
        broker.close("w", end: end)
        #expect(await collect(a).count == 100)
        #expect(await collect(b).map(\.seq) == (1...100).map { Int64($0) })
    }

    @Test func streamsEndAfterClose() async {
        let broker = LogBroker()
        broker.open("w")
        let (lines, _) = broker.subscribe("w")
        broker.close("w", end: end)
        #expect(await collect(lines).isEmpty)
        #expect(broker.openCount == 0)
        // Publishing after close leaves nothing behind.
        broker.publish("w", line(1))
        #expect(broker.openCount == 0)
    }

    @Test func lateSubscriberGetsOnlyLaterLines() async {
        let broker = LogBroker()
        broker.open("w")
        broker.publish("w", [line(1), line(2)])
        let (lines, _) = broker.subscribe("w")
        broker.publish("w", [line(3), line(4)])
        broker.close("w", end: end)
        #expect(await collect(lines).map(\.seq) == [3, 4])
    }

    @Test func unsubscribingMidStreamEndsThatStreamOnly() async {
        let broker = LogBroker()
        broker.open("w")
        let (a, unsubscribe) = broker.subscribe("w")
        let (b, _) = broker.subscribe("w")
        broker.publish("w", line(1))
        let first = await collect(a, count: 1)
        #expect(first.map(\.seq) == [1])
        unsubscribe()
        broker.publish("w", line(2))
        broker.close("w", end: end)
        #expect(await collect(b).map(\.seq) == [1, 2])
        #expect(broker.log("w") == nil)
    }

    @Test func publishingWithNoSubscribersLeavesNothingBehind() {
        let broker = LogBroker()
        broker.publish("unknown", line(1))
        #expect(broker.openCount == 0)
        let log = broker.open("w")
        broker.publish("w", (1...10).map { line($0) })
        #expect(log.waiterCount == 0)
        broker.close("w", end: end)
        #expect(broker.openCount == 0)
    }

    @Test func cursorReadsFromHistoryWhenBehindTheWindow() {
        let stored = (1...50).map { line(Int64($0)) }
        let broker = LogBroker(windowLines: 5, history: history(stored))
        broker.open("w")
        broker.publish("w", stored)
        broker.markPersisted("w", upTo: 50)
        let sub = broker.subscription("w", after: 0)!
        var got: [Int64] = []
        while case .lines(let ls) = sub.next(max: 7) { got += ls.map(\.seq) }
        #expect(got == (1...50).map { Int64($0) })
    }

    /// With an encoder, framed reads get the lines encoded once at publish, as runs that
    /// fit the byte budget (at least one frame); lines behind the window still come as lines.
    @Test func framedReadsGetFramesWithinTheBudgetThenHistoryAsLines() {
        let stored = (1...30).map { line(Int64($0)) }
        let encoded = EncodeCount()
        let broker = LogBroker(windowLines: 10, history: history(stored), frame: { l in encoded.add(); return Array("<\(l.seq)>".utf8) })
        broker.open("w")
        broker.publish("w", Array(stored[0..<20]))
        broker.markPersisted("w", upTo: 20)
        broker.publish("w", Array(stored[20...]))
        broker.markPersisted("w", upTo: 30)
        #expect(encoded.value == 30)
        // Lines 1-20 are persisted and the window keeps 10 lines: 1-20 come from history.
        let sub = broker.subscription("w", after: 0)!
        var lines: [Int64] = []
        var frames: [String] = []
        loop: while true {
            switch sub.next(max: 100, maxBytes: 9, framed: true) {
            case .lines(let ls): lines += ls.map(\.seq)
            case .frames(let bytes, let last):
                frames.append(String(decoding: bytes, as: UTF8.self))
                #expect(sub.cursor == last)
            case .wait, .end: break loop
            case .failed(let why): Issue.record("\(why)"); break loop
            }
        }
        #expect(lines == (1...20).map { Int64($0) })
        // 9 bytes hold two 4-byte frames.
        #expect(frames.first == "<21><22>")
        #expect(frames.joined() == (21...30).map { "<\($0)>" }.joined())
        #expect(frames.allSatisfy { $0.utf8.count <= 9 })
        // Another subscriber reuses the frames: nothing is encoded again.
        let again = broker.subscription("w", after: 25)!
        guard case .frames(let bytes, 30) = again.next(max: 100, maxBytes: 1 << 20, framed: true) else {
            Issue.record("expected frames up to 30"); return
        }
        #expect(String(decoding: bytes, as: UTF8.self) == "<26><27><28><29><30>")
        #expect(encoded.value == 30)
        // A budget smaller than one frame still gets that frame.
        let tight = broker.subscription("w", after: 28)!
        guard case .frames(let one, 29) = tight.next(max: 100, maxBytes: 1, framed: true) else {
            Issue.record("expected one frame"); return
        }
        #expect(one == Array("<29>".utf8))
        // A reader that does not ask for frames still gets lines.
        let plain = broker.subscription("w", after: 28)!
        guard case .lines(let ls) = plain.next() else { Issue.record("expected lines"); return }
        #expect(ls.map(\.seq) == [29, 30])
    }

    /// A waiter is woken by each line published while it waits: no wake-up is lost.
    @Test func linesInABurstStillWakeTheirWaiters() {
        let broker = LogBroker()
        broker.open("w")
        let sub = broker.subscription("w", after: 0)!
        let woken = DispatchSemaphore(value: 0)
        sub.setWaker { woken.signal() }
        var got: [Int64] = []
        for seq in 1...200 as ClosedRange<Int64> {
            if case .wait = sub.next() {} else { Issue.record("expected wait before \(seq)") }
            broker.publish("w", line(seq))
            #expect(woken.wait(timeout: .now() + 10) == .success)
            guard case .lines(let ls) = sub.next() else { Issue.record("expected line \(seq)"); return }
            got += ls.map(\.seq)
        }
        #expect(got == Array(1...200))
    }

    /// With a store behind it, the stored log is the truth: a published line reaches no
    /// reader until it is stored, the store's commit wakes the waiters, and a line not yet
    /// stored stays in memory whatever the window's size (the store has nothing to give).
    @Test func aLineIsSeenOnlyOnceItIsStored() {
        let store = Locked<[LogLine]>([])
        let broker = LogBroker(windowLines: 2) { _, after, limit in store.withLock { Array($0.filter { $0.seq > after }.prefix(limit)) } }
        broker.open("w")
        let sub = broker.subscription("w", after: 0)!
        let woken = DispatchSemaphore(value: 0)
        sub.setWaker { woken.signal() }
        let lines = (1...10).map { line(Int64($0)) }
        broker.publish("w", lines)
        guard case .wait = sub.next(max: 100) else { Issue.record("an unstored line was read"); return }
        #expect(broker.log("w")?.lastSeq == 0)
        store.withLock { $0 = Array(lines[0..<4]) }
        broker.markPersisted("w", upTo: 4)
        #expect(woken.wait(timeout: .now() + 10) == .success, "storing lines did not wake the reader")
        var got: [Int64] = []
        while case .lines(let ls) = sub.next(max: 100) { got += ls.map(\.seq) }
        #expect(got == [1, 2, 3, 4])
        #expect(broker.log("w")?.lastSeq == 4)
        // 5-10 are not in the store: only memory has them, past the window of 2.
        store.withLock { $0 = lines }
        broker.markPersisted("w", upTo: 10)
        let late = broker.subscription("w", after: 4)!
        while case .lines(let ls) = late.next(max: 100) { got += ls.map(\.seq) }
        #expect(got == (1...10).map { Int64($0) })
        // The end comes after the last stored line.
        broker.close("w", end: EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 10))
        guard case .end(_, 10) = late.next() else { Issue.record("expected the end at 10"); return }
    }

    @Test func readsStayWithinTheirByteBudget() {
        let broker = LogBroker()
        broker.open("w")
        let big = String(repeating: "x", count: 64 * 1024)
        broker.publish("w", (1...100).map { line(Int64($0), big) })
        let sub = broker.subscription("w", after: 0)!
        guard case .lines(let ls) = sub.next(max: 512, maxBytes: 256 * 1024) else { Issue.record("expected lines"); return }
        #expect(ls.count == 4)
        #expect(ls.map(\.seq) == [1, 2, 3, 4])
    }

    @Test func theWindowIsBoundedInBytes() {
        let stored = (1...200).map { line(Int64($0), String(repeating: "y", count: 64 * 1024)) }
        let broker = LogBroker(windowLines: 10_000, windowBytes: 1 << 20, history: history(stored))
        broker.open("w")
        broker.publish("w", stored)
        broker.markPersisted("w", upTo: 200)
        // Early lines left memory, and still come back in order from the store.
        let sub = broker.subscription("w", after: 0)!
        var got: [Int64] = []
        while case .lines(let ls) = sub.next(max: 50, maxBytes: 1 << 20) { got += ls.map(\.seq) }
        #expect(got == (1...200).map { Int64($0) })
    }

    @Test func endCarriesTheLastSeq() {
        let broker = LogBroker()
        broker.open("w")
        broker.publish("w", [line(1), line(2)])
        let sub = broker.subscription("w", after: 0)!
        broker.close("w", end: end)
        guard case .lines(let ls) = sub.next() else { Issue.record("expected lines"); return }
        #expect(ls.count == 2)
        guard case .end(let info, let last) = sub.next() else { Issue.record("expected end"); return }
        #expect(info == end)
        #expect(last == 2)
    }

    @Test func stressManyPublishersAndSubscribers() async {
        let broker = LogBroker()
        let workloads = (0..<8).map { "w\($0)" }
        for w in workloads { broker.open(w) }
        let perWorkload = 2000
        // Four subscribers per workload, subscribed before publishing starts.
        var streams: [(String, AsyncStream<LogLine>)] = []
        for w in workloads { for _ in 0..<4 { streams.append((w, broker.subscribe(w).lines)) } }
        await withTaskGroup(of: Void.self) { group in
            for w in workloads {
                group.addTask {
                    var seq: Int64 = 0
                    while seq < perWorkload {
                        let batch = (1...Int.random(in: 1...50)).map { _ -> LogLine in seq += 1; return LogLine(seq: seq, stream: .stdout, ts: 0, line: "x") }
                            .filter { $0.seq <= perWorkload }
                        broker.publish(w, batch)
                        if Bool.random() { await Task.yield() }
                    }
                    broker.close(w, end: EndInfo(status: .completed, exitCode: 0, error: nil, logLines: Int64(perWorkload)))
                }
            }
            for (_, s) in streams {
                group.addTask {
                    var expected: Int64 = 1
                    var ok = true
                    for await l in s {
                        if l.seq != expected { ok = false }
                        expected += 1
                    }
                    #expect(ok)
                    #expect(expected == Int64(perWorkload) + 1)
                }
            }
        }
        #expect(broker.openCount == 0)
    }
}

/// Counts the broker's encoder calls (made on the publishing thread).
private final class EncodeCount: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
