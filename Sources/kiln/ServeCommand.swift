import ArgumentParser
import Foundation
import KilnAPI
import Logging
import Metrics
import Prometheus

/// `kiln serve`: every `KILN_*` variable has a flag named after it; a flag wins.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the Kiln server.")

    @Option(parsing: .unconditional, help: "address:port to bind (KILN_LISTEN; port 0 picks a free one)") var listen: String?
    @Option(parsing: .unconditional, help: "SQLite file, or :memory: (KILN_DB)") var db: String?
    @Option(parsing: .unconditional, help: "bearer token every /v1 request needs (KILN_API_TOKEN)") var apiToken: String?
    @Option(parsing: .unconditional, help: "workloads executing at once (KILN_MAX_CONCURRENT)") var maxConcurrent: String?
    @Option(parsing: .unconditional, help: "pending workloads allowed (KILN_QUEUE_LIMIT)") var queueLimit: String?
    @Option(parsing: .unconditional, help: "largest request body in bytes (KILN_MAX_BODY_BYTES)") var maxBodyBytes: String?
    @Option(parsing: .unconditional, help: "default workload timeout in seconds (KILN_DEFAULT_TIMEOUT_S)") var defaultTimeoutS: String?
    @Option(parsing: .unconditional, help: "largest workload timeout in seconds (KILN_MAX_TIMEOUT_S)") var maxTimeoutS: String?
    @Option(parsing: .unconditional, help: "SSE keep-alive interval in seconds (KILN_HEARTBEAT_S)") var heartbeatS: String?
    @Option(parsing: .unconditional, help: "comma-separated CORS origins, or * (KILN_CORS_ORIGINS)") var corsOrigins: String?
    @Option(parsing: .unconditional, help: "server log level (KILN_LOG_LEVEL)") var logLevel: String?
    @Option(parsing: .unconditional, help: "JSON file of further tokens, by SHA-256 digest (KILN_TOKENS_FILE)") var tokensFile: String?
    @Option(parsing: .unconditional, help: "comma-separated backends that may run workloads (KILN_ISOLATION; process only when listed)") var isolation: String?
    @Option(parsing: .unconditional, help: "1: listen beyond loopback without a token (KILN_ALLOW_UNAUTHENTICATED)") var allowUnauthenticated: String?

    func run() throws {
        let flags: [String: String?] = [
            "KILN_LISTEN": listen, "KILN_DB": db, "KILN_API_TOKEN": apiToken,
            "KILN_MAX_CONCURRENT": maxConcurrent, "KILN_QUEUE_LIMIT": queueLimit,
            "KILN_MAX_BODY_BYTES": maxBodyBytes, "KILN_DEFAULT_TIMEOUT_S": defaultTimeoutS,
            "KILN_MAX_TIMEOUT_S": maxTimeoutS, "KILN_HEARTBEAT_S": heartbeatS,
            "KILN_CORS_ORIGINS": corsOrigins, "KILN_LOG_LEVEL": logLevel,
            "KILN_TOKENS_FILE": tokensFile, "KILN_ISOLATION": isolation,
            "KILN_ALLOW_UNAUTHENTICATED": allowUnauthenticated,
        ]
        let config: ServerConfig
        do {
            config = try ServerConfig.resolve(flags: flags, environment: ProcessInfo.processInfo.environment)
        } catch {
            Self.fail("\(error)")
        }
        let level = Logger.Level(rawValue: config.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let runner = ServerRunner(config: config, logger: Logger(label: "kiln"), metricsText: { registry.emitToBuffer() })
        do {
            try runner.start()
        } catch {
            Self.fail("\(error)")
        }
        // SIGTERM and SIGINT: a graceful stop, then exit 0.
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: DispatchQueue(label: "kiln.signals"))
            source.setEventHandler {
                runner.stop(reason: sig == SIGTERM ? "SIGTERM" : "SIGINT")
                Foundation.exit(0)
            }
            source.resume()
            sources.append(source)
        }
        withExtendedLifetime(sources) { dispatchMain() }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("kiln: \(message)\n".utf8))
        Foundation.exit(2)
    }
}
