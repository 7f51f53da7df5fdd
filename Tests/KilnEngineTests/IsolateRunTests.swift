import Foundation
import Testing
import KilnCore
@testable import KilnBackends

/// The queue between the isolate host's reader thread and a run's thread is bounded: a
/// poster past the bound waits until the run takes lines, or until the run is closed.
@Suite(.timeLimit(.minutes(2)), .ownThread) struct IsolateRunTests {
    @Test func postingPastTheBoundWaitsUntilLinesAreTaken() throws {
        let run = IsolateRun(limit: 1000)
        let line = String(repeating: "x", count: 600)
        let posted = Locked(0)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            for _ in 0..<3 {
                run.post(.log(.stdout, line))
                posted.withLock { $0 += 1 }
            }
            run.post(.finished(ExecutionResult(exitCode: 0)))
            done.signal()
        }
        // Two fit (the second crosses the bound); the third waits for a take.
        while posted.withLock({ $0 }) < 2 { usleep(1000) }
        #expect(done.wait(timeout: .now() + 0.3) == .timedOut, "a third line went past the bound")
        #expect(posted.withLock { $0 } == 2 && run.pendingBytes == 1200)
        guard case .log? = run.next(timeout: 1) else { Issue.record("no line"); return }
        #expect(done.wait(timeout: .now() + 30) == .success)
        var events = 0
        while run.next(timeout: 0.01) != nil { events += 1 }
        #expect(events == 3 && run.pendingBytes == 0)
    }

    @Test func closingReleasesAWaitingPoster() throws {
        let run = IsolateRun(limit: 10)
        run.post(.log(.stdout, String(repeating: "y", count: 20)))
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            run.post(.log(.stdout, "waits"))
            done.signal()
        }
        #expect(done.wait(timeout: .now() + 0.3) == .timedOut)
        run.close()
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(run.next(timeout: 0.01) == nil)
    }
}
