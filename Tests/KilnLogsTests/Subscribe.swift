import Foundation
import KilnCore
@testable import KilnLogs

/// Tests read a live log as an AsyncStream: a pump moves lines from a subscription into
/// the stream whenever it wakes. The buffer is unbounded, which only a test can afford;
/// the server reads through `LogCursor`.
extension LogBroker {
    func subscribe(_ id: String) -> (lines: AsyncStream<LogLine>, unsubscribe: @Sendable () -> Void) {
        let (stream, continuation) = AsyncStream<LogLine>.makeStream(bufferingPolicy: .unbounded)
        guard let sub = subscription(id, after: nil) else {
            continuation.finish()
            return (stream, {})
        }
        let pump = SubscriptionPump(sub, continuation)
        continuation.onTermination = { _ in sub.cancel() }
        pump.start()
        return (stream, { sub.cancel(); continuation.finish() })
    }
}

private final class SubscriptionPump: @unchecked Sendable {
    let sub: LogSubscription
    let continuation: AsyncStream<LogLine>.Continuation
    // Serializes reads of the subscription.
    let queue = DispatchQueue(label: "kiln.test.pump")

    init(_ sub: LogSubscription, _ continuation: AsyncStream<LogLine>.Continuation) {
        self.sub = sub
        self.continuation = continuation
    }

    func start() {
        sub.setWaker { [self] in queue.async { self.drain() } }
        queue.async { self.drain() }
    }

    private func drain() {
        while true {
            switch sub.next() {
            case .lines(let lines):
                for l in lines { continuation.yield(l) }
            case .frames, .failed:
                continuation.finish()
                return
            case .wait:
                return
            case .end:
                continuation.finish()
                sub.cancel()
                return
            }
        }
    }
}
