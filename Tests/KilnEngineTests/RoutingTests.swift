import Foundation
import Logging
import KilnTestSupport
import Testing
import KilnCore
import KilnLogs
import KilnStore
@testable import KilnEngine
import KilnBackends

/// `auto` and explicit isolation against real backends in different sets.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct RoutingTests {
    func engine(_ names: [Isolation], allowed: Set<Isolation> = Set(Isolation.allCases)) throws -> Engine {
        let root = NSTemporaryDirectory() + "kiln-routing-\(UUID().uuidString.prefix(8))"
        let logger = Logger(label: "test")
        var backends: [any Backend] = []
        for n in names {
            switch n {
            case .process: backends.append(ProcessBackend(workRoot: root + "/work"))
            case .sandbox: backends.append(SandboxBackend(stateRoot: root + "/state", workRoot: root + "/work"))
            case .gvisor: backends.append(GVisorBackend(stateRoot: root + "/state", workRoot: root + "/work", logger: logger))
            case .isolate: backends.append(IsolateBackend(scriptFolder: root + "/isolate", logger: logger))
            case .auto: break
            }
        }
        let store = try SQLiteStore(path: ":memory:")
        return Engine(store: store, broker: LogBroker(), backends: backends,
                      config: EngineConfig(maxConcurrent: 2, queueLimit: 10, workRoot: root + "/work", allowedIsolation: allowed),
                      logger: logger)
    }

    func available(_ e: Engine) -> Set<Isolation> {
        Set(e.capabilities.filter(\.available).map(\.name))
    }

    @Test func autoPicksTheStrongestAvailableAndIsolateForDefaultExports() throws {
        let e = try engine([.process, .sandbox, .gvisor, .isolate])
        defer { e.shutdown(timeout: 1) }
        let have = available(e)
        for b in e.capabilities where !b.available { print("SKIPPED in routing: \(b.name.rawValue): \(b.reason ?? "")") }
        let strongest = [Isolation.gvisor, .sandbox, .process].first { have.contains($0) }
        for runtime in Runtime.allCases {
            #expect(try e.chooseBackend(runtime: runtime, isolation: .auto, code: "print(1)").name == strongest)
        }
        let esm = "export default (x) => x"
        #expect(try e.chooseBackend(runtime: .node, isolation: .auto, code: esm).name == (have.contains(.isolate) ? .isolate : strongest))
        // A default export only routes node code to the isolate.
        #expect(try e.chooseBackend(runtime: .python, isolation: .auto, code: esm).name == strongest)
        // Explicit choices are honoured; isolate runs node only.
        for name in have {
            if name == .isolate {
                #expect(try e.chooseBackend(runtime: .node, isolation: .isolate, code: esm).name == .isolate)
                #expect(throws: EngineError.self) { try e.chooseBackend(runtime: .python, isolation: .isolate, code: "") }
            } else {
                #expect(try e.chooseBackend(runtime: .python, isolation: name, code: "").name == name)
            }
        }
    }

    @Test func withOnlyTheProcessBackendAutoUsesItAndOthersAreRefusedWithTheAlternatives() throws {
        let e = try engine([.process])
        #expect(try e.chooseBackend(runtime: .node, isolation: .auto, code: "export default () => 1").name == .process)
        do {
            _ = try e.chooseBackend(runtime: .python, isolation: .gvisor, code: "")
            Issue.record("gvisor should be refused")
        } catch let EngineError.isolationUnavailable(requested, _, availableNames) {
            #expect(requested == .gvisor)
            #expect(availableNames == ["process"])
        }
    }

    /// Whether a test that needs the sandbox runs: it is available, or required (CI).
    static var sandboxRuns: Bool {
        if ProcessInfo.processInfo.environment["KILN_REQUIRE_BACKENDS"] == "1" { return true }
        let root = NSTemporaryDirectory() + "kiln-probe-\(UUID().uuidString.prefix(8))"
        let cap = SandboxBackend(stateRoot: root + "/state", workRoot: root + "/work").capabilities()
        if !cap.available { print("SKIPPED: sandbox unavailable: \(cap.reason ?? "")") }
        return cap.available
    }

    @Test(.enabled(if: RoutingTests.sandboxRuns, "needs the sandbox backend (bubblewrap, as root)"))
    func withoutGVisorAutoFallsToTheSandbox() throws {
        let e = try engine([.process, .sandbox])
        try #require(available(e).contains(.sandbox), "sandbox unavailable: \(e.capability(.sandbox)?.reason ?? "")")
        #expect(try e.chooseBackend(runtime: .shell, isolation: .auto, code: "true").name == .sandbox)
    }
}

/// The isolation policy (`KILN_ISOLATION`, narrowed by a token's own list).
@Suite(.timeLimit(.minutes(10)), .ownThread) struct IsolationPolicyRoutingTests {
    let routing = RoutingTests()

    @Test func processIsOffByDefaultAndAutoNeverFallsBackToIt() throws {
        let e = try routing.engine([.process], allowed: Isolation.allowedByDefault)
        defer { e.shutdown(timeout: 1) }
        #expect(throws: EngineError.isolationNotAllowed(requested: .process, allowed: ["gvisor", "sandbox", "isolate"])) {
            try e.chooseBackend(runtime: .shell, isolation: .process, code: "id")
        }
        do {
            _ = try e.chooseBackend(runtime: .shell, isolation: .auto, code: "id")
            Issue.record("auto chose a backend that is not allowed")
        } catch let EngineError.isolationUnavailable(requested, _, available) {
            #expect(requested == .auto)
            #expect(available.isEmpty)
        }
    }

    @Test func processRunsWhenListed() throws {
        let e = try routing.engine([.process], allowed: [.process])
        defer { e.shutdown(timeout: 1) }
        #expect(try e.chooseBackend(runtime: .shell, isolation: .process, code: "id").name == .process)
        #expect(try e.chooseBackend(runtime: .shell, isolation: .auto, code: "id").name == .process)
    }

    @Test(.enabled(if: getuid() == 0, "the sandbox and gVisor need root here"))
    func aTokenListNarrowsTheServerList() throws {
        let e = try routing.engine([.process, .sandbox, .gvisor], allowed: [.process, .sandbox, .gvisor])
        defer { e.shutdown(timeout: 1) }
        let have = Set(e.capabilities.filter(\.available).map(\.name))
        try #require(have.contains(.sandbox), "sandbox unavailable: \(e.capability(.sandbox)?.reason ?? "")")
        // gvisor is stronger, but the token allows only the sandbox.
        #expect(try e.chooseBackend(runtime: .python, isolation: .auto, code: "pass", limit: [.sandbox]).name == .sandbox)
        #expect(throws: EngineError.isolationNotAllowed(requested: .gvisor, allowed: ["sandbox"])) {
            try e.chooseBackend(runtime: .python, isolation: .gvisor, code: "pass", limit: [.sandbox])
        }
        // A token cannot widen the server's list.
        #expect(throws: EngineError.isolationNotAllowed(requested: .isolate, allowed: ["sandbox"])) {
            try e.chooseBackend(runtime: .node, isolation: .isolate, code: "", limit: [.sandbox, .isolate])
        }
        #expect(e.allowedIsolation(limit: [.isolate]).isEmpty)
    }
}
