import ArgumentParser
import Foundation
import KilnAPI
import Logging
import Metrics
import Prometheus

/// `kiln serve`: every `KILN_*` variable has a flag named after it; a flag wins. The help
/// comes from `Settings.all`, and a test checks that the flags here are exactly its flags.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the Kiln server.")

    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_LISTEN").help)) var listen: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_DB").help)) var db: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_ROLE").help)) var role: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_NODE_NAME").help)) var nodeName: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_NODE_LEASE_S").help)) var nodeLeaseS: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_API_TOKEN").help)) var apiToken: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_CONCURRENT").help)) var maxConcurrent: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_TENANT_MAX_CONCURRENT").help)) var tenantMaxConcurrent: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_QUEUE_LIMIT").help)) var queueLimit: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_BODY_BYTES").help)) var maxBodyBytes: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_DEFAULT_TIMEOUT_S").help)) var defaultTimeoutS: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_TIMEOUT_S").help)) var maxTimeoutS: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_MEM_MB").help)) var maxMemMb: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_CPUS").help)) var maxCpus: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_PIDS").help)) var maxPids: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_DISK_MB").help)) var maxDiskMb: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_SANDBOX_UIDS").help)) var sandboxUids: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_MAX_LOG_BYTES").help)) var maxLogBytes: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_RETENTION").help)) var retention: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_HEARTBEAT_S").help)) var heartbeatS: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_REQUEST_TIMEOUT_S").help)) var requestTimeoutS: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_CORS_ORIGINS").help)) var corsOrigins: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_LOG_LEVEL").help)) var logLevel: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_TOKENS_FILE").help)) var tokensFile: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_ISOLATION").help)) var isolation: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(Settings.named("KILN_ALLOW_UNAUTHENTICATED").help)) var allowUnauthenticated: String?

    func run() throws {
        let flags: [String: String?] = [
            "KILN_LISTEN": listen, "KILN_DB": db, "KILN_API_TOKEN": apiToken,
            "KILN_ROLE": role, "KILN_NODE_NAME": nodeName, "KILN_NODE_LEASE_S": nodeLeaseS,
            "KILN_MAX_CONCURRENT": maxConcurrent, "KILN_TENANT_MAX_CONCURRENT": tenantMaxConcurrent,
            "KILN_QUEUE_LIMIT": queueLimit,
            "KILN_MAX_BODY_BYTES": maxBodyBytes, "KILN_DEFAULT_TIMEOUT_S": defaultTimeoutS,
            "KILN_MAX_TIMEOUT_S": maxTimeoutS, "KILN_HEARTBEAT_S": heartbeatS,
            "KILN_REQUEST_TIMEOUT_S": requestTimeoutS,
            "KILN_MAX_MEM_MB": maxMemMb, "KILN_MAX_CPUS": maxCpus, "KILN_MAX_PIDS": maxPids,
            "KILN_MAX_DISK_MB": maxDiskMb, "KILN_SANDBOX_UIDS": sandboxUids,
            "KILN_MAX_LOG_BYTES": maxLogBytes, "KILN_RETENTION": retention,
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
        var factory = PrometheusMetricsFactory(registry: registry)
        // Workload durations in buckets up to the longest timeout a workload may have (the
        // defaults stop at 10 s, where most workloads had only +Inf).
        let steps: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400]
        let longest = Double(config.maxTimeoutS)
        factory.durationHistogramBuckets["kiln_workload_duration_seconds"] =
            (steps.filter { $0 < longest } + [longest]).map { .milliseconds(Int64($0 * 1000)) }
        MetricsSystem.bootstrap(factory)
        let runner = ServerRunner(config: config, logger: Logger(label: "kiln"), metricsText: { registry.emitToBuffer() })
        // SIGTERM and SIGINT: a graceful stop, then exit 0. Installed before the server
        // starts, so that a signal sent as soon as the listening line shows is never lost
        // (ignored with no source yet, it would leave the server running).
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
        do {
            try runner.start()
        } catch {
            Self.fail("\(error)")
        }
        withExtendedLifetime(sources) { dispatchMain() }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("kiln: \(message)\n".utf8))
        Foundation.exit(2)
    }
}
