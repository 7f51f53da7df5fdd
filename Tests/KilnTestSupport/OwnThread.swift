import Dispatch
import Foundation
import KilnCore
import Testing

/// `.ownThread`: each test of the suite runs on a serial Dispatch queue of its own instead
/// of Swift concurrency's cooperative pool.
///
/// Most integration helpers block (they wait for `curl`, for a server's exit, for a socket),
/// and the cooperative pool is only as wide as the machine has cores. On two cores two
/// blocked tests stalled every other test, so the suites ran one pair at a time while the
/// CPU sat mostly idle. A private serial queue gets a thread of its own from Dispatch's
/// overcommit pool, so a blocked test holds only that thread. The test body keeps this
/// queue through `withTaskExecutorPreference`, and so do the child tasks it awaits.
///
/// At most `KILN_TEST_PARALLEL` tests (default 6) run at once: with every test started
/// together, dozens of servers starting on two cores missed their own start deadline.
public struct OwnThreadTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        // The suite itself needs no thread; each of its test cases gets one.
        guard testCase != nil else { return try await function() }
        await TestSlots.shared.acquire()
        defer { TestSlots.shared.release() }
        try await withTaskExecutorPreference(QueueExecutor(label: "test: \(test.name)")) {
            try await function()
        }
    }
}

extension Trait where Self == OwnThreadTrait {
    public static var ownThread: Self { OwnThreadTrait() }
}

/// A task executor that runs every job on one serial queue.
final class QueueExecutor: TaskExecutor {
    private let queue: DispatchQueue

    init(label: String) { queue = DispatchQueue(label: label) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// A counting semaphore that suspends rather than blocks: waiting for a slot holds no thread.
final class TestSlots: Sendable {
    static let shared = TestSlots(ProcessInfo.processInfo.environment["KILN_TEST_PARALLEL"].flatMap(Int.init) ?? 6)

    private let state: Locked<(free: Int, waiting: [CheckedContinuation<Void, Never>])>

    init(_ count: Int) { state = Locked((max(1, count), [])) }

    func acquire() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.free > 0 { s.free -= 1; return true }
                s.waiting.append(waiter)
                return false
            }
            if now { waiter.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty { s.free += 1; return nil }
            return s.waiting.removeFirst()
        }
        next?.resume()
    }
}
