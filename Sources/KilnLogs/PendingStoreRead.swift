import KilnCore

/// Runs a piece of work somewhere other than the caller's thread.
public typealias WorkRunner = @Sendable (@escaping @Sendable () -> Void) -> Void

/// A reader's store read, one at a time, run by the broker's `storeReads` runner (store
/// queues, never the HTTP daemon's threads), its answer kept until the reader asks again.
///
/// A stream's read callback must not block on SQLite: it asks, gets `.pending`, answers
/// `.wait`, and is woken once the answer is in. Without a runner the read runs inline.
final class PendingStoreRead: Sendable {
    /// What was asked: only the same question gets the kept answer. (Lines after a seq are
    /// the same lines however many were asked for, so the limit is not part of it.)
    enum Question: Equatable, Sendable {
        case lines(after: Int64)
        case end
    }

    enum Answer: Sendable {
        case lines([LogLine]?)
        case end(EndInfo?)
    }

    enum Outcome {
        case pending
        case answered(Answer)
        case failed(String)
    }

    private enum State: Sendable {
        case idle
        case running(Question)
        case done(Question, Result<Answer, StoreReadError>)
    }

    struct StoreReadError: Error, Sendable { let text: String }

    private enum Step { case take(Result<Answer, StoreReadError>), wait, start }

    private let state = Locked<State>(.idle)
    private let runner: WorkRunner?

    init(runner: WorkRunner?) {
        self.runner = runner
    }

    /// The answer to `question`: kept from the run it started earlier, or `.pending` while
    /// `read` runs on the runner (`wake` is called once the answer is in).
    func ask(_ question: Question, wake: @escaping @Sendable () -> Void,
             read: @escaping @Sendable () throws -> Answer) -> Outcome {
        guard let runner else { return PendingStoreRead.outcome(PendingStoreRead.run(read)) }
        let step: Step = state.withLock { state in
            switch state {
            case .done(let asked, let result) where asked == question:
                state = .idle
                return .take(result)
            case .running:
                // Its wake comes; an answer to another question is then replaced.
                return .wait
            default:
                state = .running(question)
                return .start
            }
        }
        switch step {
        case .take(let result):
            return PendingStoreRead.outcome(result)
        case .wait:
            return .pending
        case .start:
            runner { [self] in
                let result = PendingStoreRead.run(read)
                state.withLock { $0 = .done(question, result) }
                wake()
            }
            return .pending
        }
    }

    private static func run(_ read: () throws -> Answer) -> Result<Answer, StoreReadError> {
        do { return .success(try read()) } catch { return .failure(StoreReadError(text: "\(error)")) }
    }

    private static func outcome(_ result: Result<Answer, StoreReadError>) -> Outcome {
        switch result {
        case .success(let answer): return .answered(answer)
        case .failure(let error): return .failed(error.text)
        }
    }
}
