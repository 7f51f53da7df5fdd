import Foundation
import Logging
import Testing
import KilnCore
import KilnStore
import KilnProcess
import KilnBackends
import KilnLogs
import KilnTestSupport
@testable import KilnEngine

/// The engine with the real process backend and a real (in-memory) SQLite store.
final class EngineHarness: @unchecked Sendable {
    let store: SQLiteStore
    let broker: LogBroker
    let engine: Engine

    init(maxConcurrent: Int = 4, tenantMaxConcurrent: Int? = nil, queueLimit: Int = 100, storePath: String = ":memory:",
         unstoredPerWorkload: Int = 4 << 20) throws {
        let store = try SQLiteStore(path: storePath)
        self.store = store
        broker = LogBroker(history: { id, after, limit in try store.lines(id, after: after, limit: limit) })
        let root = NSTemporaryDirectory() + "kiln-engine-test-\(UUID().uuidString.prefix(8))"
        engine = Engine(store: store, broker: broker, backends: [ProcessBackend(workRoot: root)],
                        config: EngineConfig(maxConcurrent: maxConcurrent, tenantMaxConcurrent: tenantMaxConcurrent,
                                             queueLimit: queueLimit, workRoot: root,
                                             allowedIsolation: [.process], unstoredPerWorkload: unstoredPerWorkload),
                        logger: Logger(label: "test"))
    }

    func request(_ runtime: Runtime, _ code: String, input: String = "null", timeout: Int = 30, mem: Int = 256,
                 env: [String: String] = [:], tenant: String = "default") -> SubmitRequest {
        SubmitRequest(runtime: runtime, code: code, inputJSON: input, isolation: .auto,
                      resources: Resources(cpus: 1, memMB: mem, timeoutS: timeout), env: env, tenant: tenant)
    }

    /// Submits and waits for the terminal record. Blocking on purpose: engine completions run
    /// on Dispatch threads, and a test that waited on the shared cooperative pool could starve
    /// while other suites block it.
    func run(_ r: SubmitRequest) throws -> WorkloadRecord {
        let done = Box<WorkloadRecord>()
        _ = try engine.submit(r) { done.set($0) }
        return done.wait()
    }

    /// Kills and waits for the `killed` record.
    func kill(_ id: String) throws -> WorkloadRecord {
        let done = Box<WorkloadRecord>()
        try engine.kill(id) { done.set($0) }
        return done.wait()
    }

    func lines(_ id: String) throws -> [LogLine] {
        try store.lines(id, after: 0, limit: 100_000)
    }
}

/// A value handed from one thread to a waiting one.
final class Box<T: Sendable>: @unchecked Sendable {
    // Guarded by `semaphore` ordering: written once before the signal, read after the wait.
    private var value: T?
    private let semaphore = DispatchSemaphore(value: 0)
    func set(_ v: T) { value = v; semaphore.signal() }
    func wait() -> T { semaphore.wait(); return value! }
}

@Suite(.timeLimit(.minutes(10)), .ownThread) struct EngineTests {
    /// A flood is read no faster than the store takes it: what is read and not stored stays
    /// within the bound (plus the one batch that may always go), and nothing is lost.
    @Test func aFloodWaitsForTheStoreInsteadOfPilingUpInMemory() throws {
        let bound = 64 << 10
        let h = try EngineHarness(storePath: NSTemporaryDirectory() + "kiln-backlog-\(UUID().uuidString)/kiln.db",
                                  unstoredPerWorkload: bound)
        let done = Box<WorkloadRecord>()
        let n = 300_000
        // A long timeout: under ThreadSanitizer on two busy cores the flood takes about 30 s.
        _ = try h.engine.submit(h.request(.python, "import sys\nfor i in range(\(n)): sys.stdout.write(f'line {i}\\n')", timeout: 300)) { done.set($0) }
        // The largest batch: 2048 lines, plus the lines of the 64 KiB pipe read that
        // crossed 2048 (at least 7 bytes each with their newline, up to 11 of text).
        let oneBatch = (EngineLogWriter.batchLines + (64 << 10) / 7) * (11 + StoreBacklog.lineOverhead)
        let peakSeen = Locked(0)
        let finished = Locked(false)
        let sampler = Thread {
            while !finished.withLock({ $0 }) {
                let now = h.engine.backlog.unstored()
                peakSeen.withLock { $0 = max($0, now) }
                usleep(200)
            }
        }
        sampler.start()
        let r = done.wait()
        finished.withLock { $0 = true }
        usleep(5_000)
        let peak = peakSeen.withLock { $0 }
        #expect(r.status == .completed)
        #expect(r.logLines == Int64(n))
        #expect(try h.store.maxSeq(r.id) == Int64(n))
        #expect(peak > 0)
        #expect(peak <= bound + oneBatch, "unstored peaked at \(peak) bytes with a bound of \(bound)")
        #expect(h.engine.backlog.unstored() == 0)
    }

    @Test func pythonRunsWithInputAndItsOutputIsParsed() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.python, """
            import sys, json
            d = json.load(sys.stdin)
            print("to stderr", file=sys.stderr)
            print(json.dumps({"sum": d["a"] + d["b"]}))
            """, input: #"{"a": 1, "b": 2}"#))
        #expect(r.status == .completed)
        #expect(r.exitCode == 0)
        #expect(try JSON.parse(r.outputJSON) == .object([("sum", .int(3))]))
        #expect(r.isolationUsed == .process)
        let lines = try h.lines(r.id)
        #expect(lines.map(\.seq) == [1, 2])
        #expect(Set(lines.map(\.stream)) == [.stdout, .stderr])
        #expect(r.logLines == 2)
    }

    @Test(arguments: [Runtime.node, .shell])
    func otherRuntimesRun(_ runtime: Runtime) throws {
        let h = try EngineHarness()
        let code = runtime == .node ? "console.log(JSON.stringify({n: 42}))" : "echo '{\"n\": 42}'"
        let r = try h.run(h.request(runtime, code))
        #expect(r.status == .completed)
        #expect(try JSON.parse(r.outputJSON) == .object([("n", .int(42))]))
    }

    @Test func plainTextOutputKeepsItsTrailingNewline() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.shell, "echo hello"))
        #expect(r.outputJSON == #""hello\n""#)
        let empty = try h.run(h.request(.shell, "true"))
        #expect(empty.outputJSON == "null")
    }

    @Test func nonZeroExitFails() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.shell, "echo bye; exit 3"))
        #expect(r.status == .failed)
        #expect(r.exitCode == 3)
        #expect(r.error?.contains("3") == true)
    }

    @Test func timeoutKillsTheGroupAndSaysSo() throws {
        let h = try EngineHarness()
        let marker = "kiln-timeout-\(UUID().uuidString.prefix(8))"
        let r = try h.run(h.request(.shell, "sh -c 'sleep 600' \(marker) & echo started; sleep 600", timeout: 1))
        #expect(r.status == .failed)
        #expect(r.error?.contains("timed out") == true)
        #expect(try h.lines(r.id).map(\.line) == ["started"])
        usleep(300_000)
        #expect(!ProcessTable.exists(marker))
    }

    @Test func killEndsTheWholeTreeIncludingADaemonizedGrandchild() throws {
        let h = try EngineHarness()
        let marker = "kiln-kill-\(UUID().uuidString.prefix(8))"
        let r = h.request(.shell, "(setsid sh -c 'sleep 600' \(marker)-a &); sh -c 'sleep 600' \(marker)-b & echo up; wait")
        let record = try h.engine.submit(r)
        // Wait for the first line: the tree is up.
        let deadline = Date().addingTimeInterval(10)
        while (try h.store.maxSeq(record.id)) < 1 && Date() < deadline { usleep(20_000) }
        // The background processes exec a moment after the first line.
        var up = false
        for _ in 0..<250 where !up {
            up = ProcessTable.exists("\(marker)-a") && ProcessTable.exists("\(marker)-b")
            if !up { usleep(20_000) }
        }
        #expect(up)
        let killed = try h.kill(record.id)
        #expect(killed.status == .killed)
        usleep(300_000)
        #expect(!ProcessTable.exists("\(marker)-a"))
        #expect(!ProcessTable.exists("\(marker)-b"))
        #expect(throws: EngineError.alreadyFinished(killed)) { try h.engine.kill(record.id) { _ in } }
    }

    @Test func serverEnvironmentNeverReachesTheWorkload() throws {
        setenv("KILN_API_TOKEN", "server-secret-token", 1)
        let h = try EngineHarness()
        let r = try h.run(h.request(.shell, "env", env: ["GIVEN": "yes"]))
        let env = try h.lines(r.id).map(\.line)
        #expect(!env.joined().contains("server-secret-token"))
        #expect(env.contains("GIVEN=yes"))
        #expect(env.contains { $0.hasPrefix("PATH=") })
        #expect(env.contains { $0.hasPrefix("HOME=") })
        #expect(env.filter { !$0.hasPrefix("PWD=") && !$0.hasPrefix("SHLVL=") && !$0.hasPrefix("_=") }.count == 3)
    }

    @Test func stdoutOver1MiBIsTruncatedAndFlaggedButEveryLineIsKept() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.python, "import sys\nfor i in range(20000): sys.stdout.write('x' * 99 + '\\n')"))
        #expect(r.status == .completed)
        #expect(r.outputTruncated)
        let output = try JSON.parse(r.outputJSON).stringValue ?? ""
        #expect(output.utf8.count == OutputCapture.limit)
        #expect(r.logLines == 20000)
        #expect(try h.lines(r.id).count == 20000)
    }

    @Test func invalidUTF8OnStdoutBecomesReplacementCharacters() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.shell, #"printf 'a\377b\n'"#))
        #expect(try JSON.parse(r.outputJSON) == .string("a\u{FFFD}b\n"))
        #expect(try h.lines(r.id).map(\.line) == ["a\u{FFFD}b"])
    }

    @Test func memoryLimitStopsAPythonAllocation() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.python, "x = bytearray(512 * 1024 * 1024)\nprint('allocated')", mem: 64))
        #expect(r.status == .failed)
        #expect(try h.lines(r.id).contains { $0.line.contains("MemoryError") })
        #expect(r.error == "memory limit of 64 MB exceeded (MemoryError)")
    }

    @Test func queueLimitRefusesPastTheLimit() throws {
        let h = try EngineHarness(maxConcurrent: 1, queueLimit: 1)
        let a = try h.engine.submit(h.request(.shell, "sleep 30"))
        let b = try h.engine.submit(h.request(.shell, "sleep 30"))
        #expect(throws: EngineError.queueFull(retryAfterSeconds: 1)) { try h.engine.submit(h.request(.shell, "true")) }
        #expect(try h.store.get(b.id)?.status == .pending)
        try h.engine.kill(b.id) { _ in }
        try h.engine.kill(a.id) { _ in }
    }

    @Test func killingAPendingWorkloadNeverRunsIt() throws {
        let h = try EngineHarness(maxConcurrent: 1)
        let a = try h.engine.submit(h.request(.shell, "sleep 30"))
        let marker = "kiln-never-\(UUID().uuidString.prefix(8))"
        let b = try h.engine.submit(h.request(.shell, "touch /tmp/\(marker)"))
        let killed = try h.kill(b.id)
        #expect(killed.status == .killed)
        #expect(killed.startedAt == nil)
        try h.engine.kill(a.id) { _ in }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/\(marker)"))
    }

    @Test func everyLineIsStoredBeforeTheTerminalStatus() throws {
        let h = try EngineHarness()
        let r = try h.run(h.request(.shell, "i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done"))
        // The completion runs after the terminal state is stored: every line is there.
        #expect(r.logLines == 5000)
        #expect(try h.store.maxSeq(r.id) == 5000)
        #expect(h.broker.log(r.id) == nil)
    }

    @Test func autoChoosesTheStrongestAvailableBackend() throws {
        let h = try EngineHarness()
        #expect(try h.engine.chooseBackend(runtime: .python, isolation: .auto, code: "pass").name == .process)
        #expect(throws: (any Error).self) { try h.engine.chooseBackend(runtime: .python, isolation: .gvisor, code: "pass") }
        #expect(Engine.hasDefaultExport("export default (x) => x"))
        #expect(!Engine.hasDefaultExport("console.log('export default')x"))
    }

    @Test func shutdownFailsRunningAndPendingWorkloads() throws {
        let h = try EngineHarness(maxConcurrent: 1)
        let a = try h.engine.submit(h.request(.shell, "echo one; sleep 30"))
        let b = try h.engine.submit(h.request(.shell, "sleep 30"))
        let deadline = Date().addingTimeInterval(10)
        while (try h.store.get(a.id)?.status) != .running && Date() < deadline { usleep(20_000) }
        h.engine.shutdown(timeout: 8)
        #expect(try h.store.get(a.id)?.status == .failed)
        #expect(try h.store.get(a.id)?.error == "server shutdown")
        #expect(try h.store.get(b.id)?.status == .failed)
        #expect(throws: EngineError.shuttingDown) { try h.engine.submit(h.request(.shell, "true")) }
    }
}
