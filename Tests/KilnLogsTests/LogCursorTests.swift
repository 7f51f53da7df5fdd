import Foundation
import KilnTestSupport
import Testing
import KilnCore
@testable import KilnLogs

/// The one reading path: a cursor reads live logs and finished ones alike, and a store
/// error stops it with `.failed`, never with an `end` that would hide missing lines.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct LogCursorTests {
    struct StoreDown: Error {}

    func line(_ seq: Int64) -> LogLine { LogLine(seq: seq, stream: .stdout, ts: 0, line: "line \(seq)") }

    /// Reads until end, failure or wait; returns the seqs and how it stopped.
    func drain(_ c: LogCursor) -> ([Int64], LogRead) {
        var seqs: [Int64] = []
        while true {
            let r = c.next(max: 7, maxBytes: 1 << 20)
            switch r {
            case .lines(let ls): seqs += ls.map(\.seq)
            case .frames: return (seqs, r)
            case .wait, .end, .failed: return (seqs, r)
            }
        }
    }

    @Test func aFinishedWorkloadIsItsStoredLinesThenItsStoredEnd() {
        let stored = (1...30).map(line)
        let broker = LogBroker(history: { _, after, limit in Array(stored.filter { $0.seq > after }.prefix(limit)) },
                               ending: { _ in EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 30) })
        let (seqs, last) = drain(broker.cursor("w", after: 12))
        #expect(seqs == (13...30).map { Int64($0) })
        guard case .end(let info, 30) = last else { Issue.record("expected end at 30, got \(last)"); return }
        #expect(info.status == .completed)
    }

    @Test func aStoreErrorIsAFailureNotAnEnd() {
        let stored = (1...30).map(line)
        let failing = LockedFlag()
        let broker = LogBroker(history: { _, after, limit in
            if failing.value && after >= 10 { throw StoreDown() }
            return Array(stored.filter { $0.seq > after }.prefix(limit))
        }, ending: { _ in EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 30) })
        failing.set()
        let (seqs, last) = drain(broker.cursor("w", after: 0))
        // 1-10 came, then the store failed: no end that claims 30 lines.
        #expect(seqs.first == 1 && seqs.last ?? 0 >= 10 && seqs.last ?? 0 < 30)
        guard case .failed(let why) = last else { Issue.record("expected a failure, got \(last)"); return }
        #expect(why.contains("cannot read stored lines"))
        // The end itself unreadable is a failure too.
        let noEnd = LogBroker(history: { _, _, _ in [] }, ending: { _ in throw StoreDown() })
        guard case .failed = noEnd.cursor("x", after: 0).next() else { Issue.record("expected a failure"); return }
    }

    /// With a store runner, no store read runs on the reader's thread: the reader gets
    /// `.wait`, its waker is called once the answer is in, and the next read returns it;
    /// for a finished log, a lagging subscriber of a live one, and a failing store alike.
    @Test func storeReadsRunOnTheRunnerAndWakeTheReader() throws {
        let queue = DispatchQueue(label: "test-store-reads")
        let onReaderThread = Locked(0)
        let readerThread = Locked<pthread_t?>(nil)
        let stored = (1...300).map(line)
        let failing = LockedFlag()
        let broker = LogBroker(windowLines: 5, history: { _, after, limit in
            if readerThread.withLock({ $0.map { pthread_equal($0, pthread_self()) != 0 } ?? false }) { onReaderThread.withLock { $0 += 1 } }
            if failing.value { throw StoreDown() }
            return Array(stored.filter { $0.seq > after }.prefix(limit))
        }, ending: { _ in EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 300) },
           storeReads: { work in queue.async(execute: work) })
        readerThread.withLock { $0 = pthread_self() }

        /// Reads to the end (or a failure), waiting for the waker after each `.wait`.
        func readAll(_ c: LogCursor) -> ([Int64], LogRead, Int) {
            let woken = DispatchSemaphore(value: 0)
            c.setWaker { woken.signal() }
            var seqs: [Int64] = [], waits = 0
            while true {
                let r = c.next(max: 50, maxBytes: 1 << 20)
                switch r {
                case .lines(let ls): seqs += ls.map(\.seq)
                case .wait:
                    waits += 1
                    if woken.wait(timeout: .now() + 10) == .timedOut { return (seqs, r, waits) }
                case .frames, .end, .failed: return (seqs, r, waits)
                }
            }
        }

        let (seqs, last, waits) = readAll(broker.cursor("done", after: 0))
        #expect(seqs == (1...300).map { Int64($0) })
        guard case .end(_, 300) = last else { Issue.record("expected end at 300, got \(last)"); return }
        #expect(waits > 0)

        // A live log whose window holds only the last lines: the rest comes from the store.
        broker.open("live")
        broker.publish("live", stored)
        broker.markPersisted("live", upTo: 300)
        let c = broker.cursor("live", after: 0)
        #expect(c.isLive)
        broker.close("live", end: EndInfo(status: .completed, exitCode: 0, error: nil, logLines: 300))
        let (liveSeqs, liveLast, _) = readAll(c)
        #expect(liveSeqs == (1...300).map { Int64($0) })
        guard case .end = liveLast else { Issue.record("expected the end, got \(liveLast)"); return }

        failing.set()
        let (none, failed, _) = readAll(broker.cursor("done", after: 0))
        #expect(none.isEmpty)
        guard case .failed(let why) = failed else { Issue.record("expected a failure, got \(failed)"); return }
        #expect(why.contains("cannot read stored lines"))
        #expect(onReaderThread.withLock { $0 } == 0, "store reads ran on the reader's thread")
    }

    @Test func aLiveLogIsReadThenItsEnd() {
        let broker = LogBroker(history: { _, _, _ in [] }, ending: { _ in nil })
        broker.open("w")
        broker.publish("w", (1...5).map(line))
        broker.markPersisted("w", upTo: 5)
        let c = broker.cursor("w", after: 2)
        #expect(c.isLive)
        let (seqs, wait) = drain(c)
        #expect(seqs == [3, 4, 5])
        guard case .wait = wait else { Issue.record("expected wait, got \(wait)"); return }
        broker.publish("w", [line(6)])
        broker.markPersisted("w", upTo: 6)
        broker.close("w", end: EndInfo(status: .failed, exitCode: 1, error: "x", logLines: 6))
        let (more, end) = drain(c)
        #expect(more == [6])
        guard case .end(_, 6) = end else { Issue.record("expected end at 6, got \(end)"); return }
    }

    @Test func aJustSubmittedWorkloadIsAttachedWhenItsLogOpens() {
        let broker = LogBroker(history: { _, _, _ in [] }, ending: { _ in nil })
        let c = broker.cursor("w", after: 0)
        #expect(!c.isLive)
        let woken = LockedFlag()
        c.setWaker { woken.set() }
        guard case .wait = c.next() else { Issue.record("expected wait"); return }
        broker.open("w")
        broker.publish("w", [line(1)])
        broker.markPersisted("w", upTo: 1)
        // The cursor looks again shortly (its waker is called), then reads the live log.
        let deadline = Date().addingTimeInterval(10)
        while !woken.value && Date() < deadline { usleep(5_000) }
        #expect(woken.value)
        guard case .lines(let ls) = c.next() else { Issue.record("expected the line"); return }
        #expect(ls.map(\.seq) == [1])
        #expect(c.isLive)
    }
}

final class LockedFlag: Sendable {
    private let flag = Locked(false)
    func set() { flag.withLock { $0 = true } }
    var value: Bool { flag.withLock { $0 } }
}
