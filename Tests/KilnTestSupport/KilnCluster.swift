import Foundation
import KilnCore

/// A real cluster for a test: a PostgreSQL server (`PostgresServer`), one `api` node and
/// `workers` worker nodes, each a `kiln serve` process on its own loopback port, all with
/// one token. `stop()` takes them down, the database last.
public final class KilnCluster: @unchecked Sendable {
    public let pg: PostgresServer
    public let api: KilnServer
    public private(set) var workers: [KilnServer]
    public let token = "cluster-token-\(UInt32.random(in: 1..<UInt32.max))"
    let env: [String: String]

    /// Why a cluster cannot run here (nil: it can).
    public static var unavailableReason: String? { PostgresServer.unavailableReason }

    public init(workers count: Int = 2, leaseSeconds: Int = 10, env extra: [String: String] = [:],
                isolation: String = KilnServer.everydayBackends) throws {
        pg = try PostgresServer()
        // Streams compared byte for byte must not differ by when a keep-alive fell.
        var env = ["KILN_HEARTBEAT_S": "3600", "KILN_NODE_LEASE_S": String(leaseSeconds), "KILN_ISOLATION": isolation]
        for (k, v) in extra { env[k] = v }
        self.env = env
        api = try KilnServer.start(env: env.merging(["KILN_ROLE": "api", "KILN_NODE_NAME": "api-1"]) { $1 },
                                   db: pg.url, token: token, isolation: isolation)
        workers = []
        for i in 1...max(1, count) {
            workers.append(try KilnServer.start(env: env.merging(["KILN_ROLE": "worker", "KILN_NODE_NAME": "worker-\(i)"]) { $1 },
                                                db: pg.url, token: token, isolation: isolation))
        }
    }

    public var nodes: [KilnServer] { [api] + workers }

    /// The worker whose lease says it runs something (`GET /v1/nodes`), once one does.
    public func busyWorker(timeout: TimeInterval = 30) throws -> KilnServer {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let (_, body) = try api.json("GET", "/v1/nodes")
            for case let n in body["nodes"]?.arrayValue ?? [] where (n["running"]?.int64Value ?? 0) > 0 {
                if let name = n["name"]?.stringValue, name.hasPrefix("worker-"), let i = Int(name.dropFirst(7)) { return workers[i - 1] }
            }
            usleep(100_000)
        }
        throw TestFailure("no worker reported a running workload within \(timeout) s")
    }

    public func stop() {
        for n in nodes { n.stop() }
        pg.stop()
    }
}
