import ArgumentParser
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

@main
struct KilnPeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln-peer",
        abstract: "A minimal Hummingbird 2 server with Kiln's log-streaming endpoints, for benchmark B5.",
        subcommands: [Serve.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve /healthz, /v1/stats, POST /v1/workloads/async, GET /v1/workloads/{id} and its /logs stream."
    )

    @Option(help: "Address to listen on, HOST:PORT (port 0: any free port).")
    var listen = "127.0.0.1:8080"

    @Option(help: "Accepted for the same command line as Kiln's; nothing is stored.")
    var db: String?

    func run() async throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
            throw ValidationError("--listen must be HOST:PORT")
        }
        let host = String(listen[..<colon])
        let env = ProcessInfo.processInfo.environment
        func int(_ name: String, _ d: Int) -> Int { env[name].flatMap { Int($0) } ?? d }
        raiseOpenFileLimit()

        var logger = Logger(label: "kiln-peer")
        logger.logLevel = Logger.Level(rawValue: (env["KILN_LOG_LEVEL"] ?? "warning").lowercased()) ?? .warning
        let runner = Runner(maxConcurrent: int("KILN_MAX_CONCURRENT", 4),
                            windowLines: int("KILN_PEER_WINDOW_LINES", 65_536),
                            windowBytes: int("KILN_PEER_WINDOW_BYTES", 64 << 20))
        let hub = HeartbeatHub(intervalSeconds: int("KILN_HEARTBEAT_S", 15))
        let api = PeerAPI(runner: runner, hub: hub, subscribers: SubscriberCount())
        let router = Router(context: BasicRequestContext.self)
        api.addRoutes(to: router)

        var app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "kiln-peer", backlog: 4096),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                print("kiln-peer listening on http://\(host):\(bound)")
                fflush(nil)
            },
            logger: logger
        )
        app.addServices(HeartbeatService(hub: hub))
        try await app.runService()
        // Nothing outlives the server: workloads still running are killed.
        runner.shutdown()
    }
}

/// Runs the heartbeat hub alongside the server until shutdown.
struct HeartbeatService: Service {
    let hub: HeartbeatHub
    func run() async throws {
        await cancelWhenGracefulShutdown { await hub.run() }
    }
}

/// Each stream is one file descriptor: allow as many as the hard limit.
func raiseOpenFileLimit() {
    var rl = rlimit()
    let resource = Int32(RLIMIT_NOFILE.rawValue)
    if getrlimit(resource, &rl) == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max
        _ = setrlimit(resource, &rl)
    }
}
