import Foundation
import KilnStore
import Logging
import PostgresNIO
import Synchronization

/// LISTEN on one connection of its own, for as long as the node runs: every announcement
/// on `channel` becomes a `ClusterSignal`. A dropped connection is made again with backoff
/// (0.1 s doubling to 2 s); each time it is made, `connected` tells the node to re-read
/// what it may have missed, since PostgreSQL does not keep notifications for a listener
/// that was away.
final class PostgresListener: Sendable {
    private let url: PostgresURL
    private let channel: String
    private let logger: Logger
    private let handler: @Sendable (ClusterSignal) -> Void
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(url: PostgresURL, channel: String, logger: Logger, handler: @escaping @Sendable (ClusterSignal) -> Void) {
        self.url = url
        self.channel = channel
        self.logger = logger
        self.handler = handler
    }

    func start() {
        let t = Task { [self] in await loop() }
        task.withLock { $0 = t }
    }

    func stop() {
        task.withLock { $0?.cancel() }
    }

    private func loop() async {
        var delay = 0.1
        var id = 0
        while !Task.isCancelled {
            id += 1
            do {
                let connection = try await PostgresConnection.connect(configuration: url.connectionConfiguration, id: id, logger: logger)
                delay = 0.1
                do {
                    try await connection.listen(on: channel) { notifications in
                        handler(.connected)
                        for try await n in notifications {
                            if let signal = PostgresListener.parse(n.payload) { handler(signal) }
                        }
                    }
                } catch {
                    try? await connection.close()
                    throw error
                }
                try? await connection.close()
                if !Task.isCancelled { handler(.disconnected("the listening connection closed")) }
            } catch {
                if Task.isCancelled { break }
                handler(.disconnected("\(PostgresErrors.map(error))"))
            }
            try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
            delay = min(2, delay * 2)
        }
    }

    /// `L id seq`, `E id`, `K id`, `W`; anything else is ignored.
    static func parse(_ payload: String) -> ClusterSignal? {
        let parts = payload.split(separator: " ")
        switch (parts.first, parts.count) {
        case ("L", 3): return Int64(parts[2]).map { .logs(id: String(parts[1]), seq: $0) }
        case ("E", 2): return .ended(id: String(parts[1]))
        case ("K", 2): return .kill(id: String(parts[1]))
        case ("W", 1): return .work
        default: return nil
        }
    }
}
