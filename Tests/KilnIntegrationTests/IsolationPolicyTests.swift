import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// `KILN_ISOLATION` from outside: `process` (no isolation, the server's own rights) is off
/// unless listed, `auto` picks only allowed backends, and `/v1/backends` says which are.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct IsolationPolicyTests {
    @Test func processIsRefusedByDefault() throws {
        let s = try KilnServer.start(isolation: nil)
        defer { s.stop() }
        let marker = "/tmp/kiln-policy-\(UUID().uuidString)"
        for path in ["/v1/workloads", "/v1/workloads/async"] {
            let (status, body) = try s.json("POST", path, body: #"{"runtime": "shell", "isolation": "process", "code": "touch \#(marker)"}"#)
            #expect(status == 422)
            #expect(body["error"]?["code"] == .string("isolation_not_allowed"))
            #expect(body["error"]?["field"] == .string("isolation"))
            let message = body["error"]?["message"]?.stringValue ?? ""
            #expect(message.contains("sandbox") && message.contains("gvisor") && message.contains("isolate") && !message.contains("allowed: process"),
                    "\(message)")
        }
        #expect(!FileManager.default.fileExists(atPath: marker), "a refused process workload ran")
        let (_, list) = try s.json("GET", "/v1/workloads")
        #expect(list["workloads"]?.arrayValue?.isEmpty == true)
        let (_, backends) = try s.json("GET", "/v1/backends")
        let allowed = Dictionary(uniqueKeysWithValues: (backends["backends"]?.arrayValue ?? []).compactMap { b in
            b["name"]?.stringValue.map { ($0, b["allowed"]?.boolValue) }
        })
        #expect(allowed == ["process": false, "sandbox": true, "gvisor": true, "isolate": true])
    }

    @Test(.enabled(if: getuid() == 0, "the sandbox and gVisor need root here"))
    func autoUsesOnlyAllowedBackends() throws {
        let s = try KilnServer.start(isolation: "process,sandbox")
        defer { s.stop() }
        let r = try s.run(#"{"runtime": "shell", "code": "echo hi"}"#)
        // gvisor is stronger and available, but not listed.
        #expect(r["isolation_used"] == .string("sandbox"), "\(r.text)")
        let (status, body) = try s.json("POST", "/v1/workloads", body: #"{"runtime": "shell", "isolation": "gvisor", "code": "true"}"#)
        #expect(status == 422)
        #expect(body["error"]?["code"] == .string("isolation_not_allowed"))
        #expect(body["error"]?["message"]?.stringValue?.hasSuffix("allowed: sandbox, process") == true, "\(body.text)")
    }

    @Test func processRunsWhenListed() throws {
        let s = try KilnServer.start(isolation: "process")
        defer { s.stop() }
        let r = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo ran"}"#)
        #expect(r["status"] == .string("completed"))
        #expect(r["isolation_used"] == .string("process"))
        let auto = try s.run(#"{"runtime": "python", "code": "print(1)"}"#)
        #expect(auto["isolation_used"] == .string("process"))
    }

    @Test func theStartLineSaysWhenNothingIsolatesAndHowToAllowProcess() throws {
        let s = try KilnServer.start(isolation: "isolate")
        defer { s.stop() }
        let out = s.stdoutText
        #expect(out.contains("no isolating backend can run python or shell workloads here"), "\(out)")
        #expect(out.contains("KILN_ISOLATION=process,sandbox,gvisor,isolate"), "\(out)")
        let (status, body) = try s.json("POST", "/v1/workloads", body: #"{"runtime": "python", "code": "print(1)"}"#)
        #expect(status == 422)
        #expect(body["error"]?["code"] == .string("isolation_unavailable"))
        #expect(body["error"]?["message"]?.stringValue?.contains("off unless KILN_ISOLATION lists it") == true, "\(body.text)")
        // With process allowed the line still says nothing isolates, but has no advice.
        let open = try KilnServer.start(isolation: "process")
        defer { open.stop() }
        #expect(open.stdoutText.contains("no isolating backend"))
        #expect(!open.stdoutText.contains("allow process:"), "\(open.stdoutText)")
    }

    @Test(.enabled(if: getuid() == 0, "the sandbox and gVisor need root here"))
    func withAnIsolatingBackendTheStartLineIsPlain() throws {
        let s = try KilnServer.start(isolation: nil)
        defer { s.stop() }
        #expect(!s.stdoutText.contains("no isolating backend"), "\(s.stdoutText)")
        // The README's first example works as it is.
        let r = try s.run(#"{"runtime": "python", "code": "import sys, json\nd = json.load(sys.stdin)\nprint(json.dumps({\"sum\": d[\"a\"] + d[\"b\"]}))", "input": {"a": 1, "b": 2}}"#)
        #expect(r["output"]?["sum"] == .int(3), "\(r.text)")
    }

    @Test func aBadListStopsTheServer() throws {
        for bad in ["auto", "docker", "", " , "] {
            #expect(throws: (any Error).self, "KILN_ISOLATION=\(bad.debugDescription)") {
                _ = try KilnServer.start(env: ["KILN_ISOLATION": bad], isolation: nil)
            }
        }
    }
}
