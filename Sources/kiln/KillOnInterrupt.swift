import Dispatch
import Foundation
import KilnCore

/// Ctrl-C (SIGINT) or SIGTERM during `kiln run`: kill the workload it started, then exit 130
/// (143 for SIGTERM), as a shell reports a command ended by the signal. Without it the
/// workload ran on after the CLI was gone. Installed before the submission, so a signal that
/// comes before the id is known waits for it.
final class KillOnInterrupt {
    private let sources: [DispatchSourceSignal]
    private struct State {
        var id: String?
        var pending: Int32?
    }
    private let state = Locked(State())
    private let client: KilnClient

    init(client: KilnClient) {
        self.client = client
        let queue = DispatchQueue(label: "kiln.cli.signals")
        let state = self.state
        sources = [SIGINT, SIGTERM].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler {
                let id = state.withLock { s -> String? in
                    if s.id == nil { s.pending = sig }
                    return s.id
                }
                if let id { KillOnInterrupt.kill(client, id, sig) }
            }
            source.resume()
            return source
        }
    }

    /// The workload is submitted: a signal from now on (or one that came before) kills it.
    func started(_ id: String) {
        let pending = state.withLock { s -> Int32? in
            s.id = id
            return s.pending
        }
        if let pending { KillOnInterrupt.kill(client, id, pending) }
    }

    private static func kill(_ client: KilnClient, _ id: String, _ sig: Int32) -> Never {
        let answer = try? client.send("DELETE", KilnClient.workloadPath(id))
        Terminal.error(answer?.0 == 200 ? "kiln: killed workload \(id)" : "kiln: could not kill workload \(id)")
        Foundation.exit(128 + sig)
    }

    deinit {
        for s in sources { s.cancel() }
    }
}
