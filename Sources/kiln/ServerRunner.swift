import Foundation
import KilnAPI
import KilnCore
import KilnEngine
import KilnStore
import KilnBackends
import KilnHTTP
import KilnLogs
import KilnPostgres
import KilnProcess
import Logging
import Metrics

/// The composition root of `kiln serve`: builds the store, broker, backends, engine, API
/// and HTTP daemon, and takes them down in order. Signals and the process exit belong to
/// `ServeCommand`.
/// A start-up failure, worded for the operator.
struct StartError: Error, CustomStringConvertible {
    var description: String
}

final class ServerRunner: Sendable {
    static let version = "0.1.0"
    let config: ServerConfig
    let logger: Logger
    let metricsText: @Sendable () -> [UInt8]
    /// Set in `start`, read by the signal handler afterwards.
    private struct Parts {
        var server: HTTPServer?
        var engine: Engine?
        var api: KilnAPI?
        var retention: RetentionSweeper?
        var workRoot: String?
        var stopping = false
    }
    private let parts = Locked(Parts())

    init(config: ServerConfig, logger: Logger, metricsText: @escaping @Sendable () -> [UInt8]) {
        self.config = config
        self.logger = logger
        self.metricsText = metricsText
    }

    /// Starts the server; throws with a message meant for the operator.
    func start() throws {
        SystemLimits.ignoreSIGPIPE()
        let files = SystemLimits.raiseOpenFileLimit()
        let store: any WorkloadStore
        var cluster: ClusterConfig? = nil
        let clustered = PostgresURL.isPostgres(config.db)
        if clustered {
            let url: PostgresURL
            do { url = try PostgresURL(config.db) } catch { throw StartError(description: "invalid KILN_DB (--db): \(error)") }
            store = try PostgresStore(url: url, logger: logger)
            cluster = ClusterConfig(role: ClusterConfig.Role(rawValue: config.role) ?? .all, nodeName: config.nodeName,
                                    leaseSeconds: config.nodeLeaseS)
            logger.notice("cluster mode: node \(config.nodeName), role \(config.role), database \(url.redacted)")
        } else {
            store = try SQLiteStore(path: config.db)
        }
        let broker = LogBroker.backed(by: store)
        // State and work folders live beside the database, so a restarted server finds and
        // removes what a killed one left; an in-memory database (or one on another machine)
        // gets a fresh folder with an unguessable name (a predictable path in /tmp could be
        // prepared by another user).
        let stateRoot = config.db == ":memory:" || clustered
            ? NSTemporaryDirectory() + "kiln-state-\(UUID().uuidString)"
            : ServerRunner.stateRoot(besideDatabase: config.db)
        let workRoot = stateRoot + "/work"
        // Work folders a killed server left may still be tmpfs mounts.
        Tmpfs.unmountAll(under: workRoot)
        try? FileManager.default.removeItem(atPath: workRoot)
        do {
            try FileManager.default.createDirectory(atPath: workRoot, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        } catch {
            throw StartError(description: "cannot create the work folder \(workRoot): \((error as NSError).localizedDescription)")
        }
        parts.withLock { $0.workRoot = workRoot }
        let backends: [any Backend] = [
            ProcessBackend(workRoot: workRoot),
            SandboxBackend(stateRoot: stateRoot, workRoot: workRoot, identities: SandboxIdentities(range: config.sandboxUIDs)),
            GVisorBackend(stateRoot: stateRoot, workRoot: workRoot, logger: logger),
            IsolateBackend(scriptFolder: stateRoot + "/isolate", logger: logger),
        ]
        let engine = Engine(store: store, broker: broker, backends: backends,
                            config: EngineConfig(maxConcurrent: config.maxConcurrent, tenantMaxConcurrent: config.tenantMaxConcurrent,
                                                 queueLimit: config.queueLimit, workRoot: workRoot,
                                                 allowedIsolation: config.isolation, maxLogBytes: config.maxLogBytes,
                                                 cluster: cluster),
                            logger: logger)
        try engine.recover()
        do { try engine.start() } catch { throw StartError(description: "cannot join the cluster: \(error)") }
        let out = FileHandle.standardOutput
        let api = KilnAPI(config: config, engine: engine, logger: logger, version: ServerRunner.version,
                          metricsText: metricsText, accessLog: { line in try? out.write(contentsOf: Data((line + "\n").utf8)) })
        let server = HTTPServer(options: .init(host: config.host, port: config.port, maxBodyBytes: config.maxBodyBytes,
                                               connectionLimit: max(64, files - 256),
                                               requestTimeoutSeconds: config.requestTimeoutS),
                                responder: api)
        try server.start()
        Gauge(label: "kiln_build_info", dimensions: [("version", ServerRunner.version)]).record(1)
        let retention = config.retentionS.map { RetentionSweeper(store: store, retentionSeconds: $0, logger: logger) }
        retention?.start()
        parts.withLock { $0.server = server; $0.engine = engine; $0.api = api; $0.retention = retention }
        let shownHost = config.host.contains(":") ? "[\(config.host)]" : config.host
        // One write, so that whoever sees the listening line sees the notice with it.
        var startLines = "kiln \(ServerRunner.version) listening on http://\(shownHost):\(server.boundPort)\n"
        if let notice = ServerRunner.isolationNotice(engine.capability, allowed: config.isolation) {
            startLines += notice + "\n"
        }
        try? out.write(contentsOf: Data(startLines.utf8))
    }

    /// Where state and work folders live: `state` beside the database, unless Kiln is root
    /// and a folder on the way there is closed to other users (a 0700 database folder).
    /// Sandboxed workloads run as other uids and must reach their work folders and the
    /// sandbox's `/etc`, so then the state lives in `/run/kiln/<a hash of the database
    /// path>` (mode 0711), the same folder again after a restart. Each work folder inside is
    /// still private to its workload's uid.
    static func stateRoot(besideDatabase db: String) -> String {
        let folder = URL(fileURLWithPath: db).deletingLastPathComponent().standardizedFileURL.path
        let beside = folder + "/state"
        guard getuid() == 0, !traversableByOthers(folder) else { return beside }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: a stable name, not a secret
        for byte in URL(fileURLWithPath: db).standardizedFileURL.path.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let run = "/run/kiln"
        guard (try? FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o711])) != nil else { return beside }
        _ = chmod(run, 0o711)
        return run + "/" + String(hash, radix: 16)
    }

    /// Whether every folder from `/` to `path` lets other users through (o+x).
    static func traversableByOthers(_ path: String) -> Bool {
        var current = URL(fileURLWithPath: path).standardizedFileURL
        while true {
            var st = stat()
            guard stat(current.path, &st) == 0, st.st_mode & S_IXOTH != 0 else { return false }
            if current.path == "/" { return true }
            current.deleteLastPathComponent()
        }
    }

    /// What the start line adds when no allowed backend isolates python and shell code
    /// (a fresh machine without bubblewrap or gVisor): why, and how to allow `process`.
    /// Probes only what it must: the allowed isolating backends, cheapest first, until one works.
    static func isolationNotice(_ capability: (Isolation) -> BackendCapabilities?, allowed: Set<Isolation>) -> String? {
        let isolating: [Isolation] = [.sandbox, .gvisor]
        if isolating.contains(where: { allowed.contains($0) && capability($0)?.available == true }) { return nil }
        let why = [Isolation.gvisor, .sandbox].map { name -> String in
            let state = !allowed.contains(name) ? "not in KILN_ISOLATION" : (capability(name)?.reason ?? "unavailable")
            return "\(name.rawValue): \(state)"
        }.joined(separator: "; ")
        var text = "kiln: no isolating backend can run python or shell workloads here (\(why))."
        if !allowed.contains(.process) {
            text += " To run them as plain processes with the server's own rights (no isolation), allow process:"
                + " KILN_ISOLATION=process,sandbox,gvisor,isolate (or --isolation process,sandbox,gvisor,isolate)."
        }
        return text
    }

    /// Graceful stop: refuse new work, end running workloads (`server shutdown`), store
    /// every line, send every open stream its `end`, then stop the daemon. Returns once
    /// everything is down (a second call returns at once).
    func stop(reason: String) {
        let taken = parts.withLock { p -> Parts? in
            if p.stopping { return nil }
            p.stopping = true
            return p
        }
        guard let taken else { return }
        let (server, engine, api, workRoot) = (taken.server, taken.engine, taken.api, taken.workRoot)
        let began = Date()
        logger.notice("stopping (\(reason))")
        taken.retention?.stop()
        api?.beginShutdown()
        engine?.shutdown(timeout: 7)
        // Streams of workloads the engine could not finish in time still get their end.
        let mirrored = engine?.mirroredLogs ?? []
        engine?.broker.closeAll { id, lastSeq in
            if let r = try? engine?.store.get(id), r.status.isTerminal { return EndInfo(record: r) }
            // Another node runs it: its streams stop without an end, to resume elsewhere.
            if mirrored.contains(id) { return nil }
            return EndInfo(status: .failed, exitCode: nil, error: "server shutdown", logLines: lastSeq)
        }
        engine?.leaveCluster()
        // Answers the engine just produced (synchronous runs ended by the shutdown) go out.
        api?.finishPendingAnswers()
        // Let open streams write their end events before the daemon goes: a stream far
        // behind must send its backlog first, so it gets what is left of 8 s from the
        // signal (at least 1.5 s), and one that still has not caught up then is closed
        // without its end; its client resumes with Last-Event-ID (SPEC §4, slow clients).
        let deadline = max(Date().addingTimeInterval(1.5), began.addingTimeInterval(8))
        while (api?.openStreams ?? 0) > 0 && Date() < deadline { usleep(20_000) }
        server?.stop()
        if let workRoot { try? FileManager.default.removeItem(atPath: workRoot) }
        logger.notice("stopped")
    }
}
