import Foundation
import Logging
import Testing
import KilnCore
import KilnStore
@testable import KilnEngine

/// `auto` and explicit isolation against real backends in different sets.
@Suite struct RoutingTests {
    func engine(_ names: [Isolation]) throws -> Engine {
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
        let store = try Store(path: ":memory:")
        return Engine(store: store, broker: LogBroker(), backends: backends,
                      config: EngineConfig(maxConcurrent: 2, queueLimit: 10, workRoot: root + "/work"), logger: logger)
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

    @Test func withoutGVisorAutoFallsToTheSandbox() throws {
        let e = try engine([.process, .sandbox])
        guard available(e).contains(.sandbox) else {
            print("SKIPPED: sandbox unavailable: \(e.capability(.sandbox)?.reason ?? "")")
            return
        }
        #expect(try e.chooseBackend(runtime: .shell, isolation: .auto, code: "true").name == .sandbox)
    }
}
