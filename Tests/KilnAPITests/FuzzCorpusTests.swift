import Foundation
import Testing
import KilnTestSupport
@testable import KilnFuzzSupport

/// The fuzz harness (make fuzz) outside libFuzzer: the committed seed corpus keeps every
/// invariant, and the harness decodes requests the way the daemon does.
/// Serialized: the tests share `FuzzHarness.shared`, whose last answer and access line are
/// per-check state.
@Suite(.serialized, .timeLimit(.minutes(10)), .ownThread) struct FuzzCorpusTests {
    @Test func theSeedCorpusKeepsEveryInvariant() throws {
        let folder = "\(KilnServer.packageRoot)/Tests/fuzz-corpus"
        let names = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        #expect(names.count >= 30)
        for name in names {
            let data = try #require(FileManager.default.contents(atPath: "\(folder)/\(name)"))
            #expect(FuzzHarness.shared.check(Array(data)) == nil, "\(name): \(FuzzHarness.shared.lastAnswer)")
        }
    }

    @Test func requestsAreDecodedAsTheDaemonDoes() {
        let text = "GET /v1/work%6coads/%00?limit=5%00&a=1&a=2&b=x+y%2B\nHost: x\nX-A:  \tv\nx-a: w\n\nbody\n\nmore"
        let (r, lines, problem) = FuzzHarness.decodeRequest(Array(text.utf8))
        #expect(problem == nil)
        #expect(r.method == "GET")
        #expect(r.path == "/v1/workloads/%00")
        #expect(r.query == ["limit": "5%00", "a": "1", "b": "x y+"])
        #expect(r.headers == ["host": "x", "x-a": "v, w"])
        #expect(lines.map(\.name) == ["Host", "X-A", "x-a"])
        #expect(r.body == Array("body\n\nmore".utf8))
        // A NUL ends the target; invalid UTF-8 is repaired.
        let (n, _, _) = FuzzHarness.decodeRequest([0x47, 0x45, 0x54, 0x20, 0x2F, 0x61, 0x00, 0x62, 0x0A, 0x0A])
        #expect(n.path == "/a")
        let (u, _, _) = FuzzHarness.decodeRequest(Array("GET /%ff\n\n".utf8))
        #expect(u.path == "/\u{FFFD}")
        // A target that is not origin-form or absolute-form is refused before routing.
        let (x, _, why) = FuzzHarness.decodeRequest(Array("POST x/v1/workloads\n\n".utf8))
        #expect(x.target.form == .invalid)
        #expect(why != nil)
    }

    @Test func scopedTokensGetTheirRolesAndTenantsAnswers() throws {
        let folder = "\(KilnServer.packageRoot)/Tests/fuzz-corpus"
        for (name, status) in [("req-scoped-read-submits", 403), ("req-scoped-other-tenant", 404), ("req-scoped-list-b", 200),
                               ("req-scoped-logs-a", 200), ("req-scoped-kill", 409), ("req-target-no-slash", 400)] {
            let data = try #require(FileManager.default.contents(atPath: "\(folder)/\(name)"))
            #expect(FuzzHarness.shared.check(Array(data)) == nil, "\(name)")
            #expect(FuzzHarness.shared.lastAnswer.hasSuffix("-> \(status)"), "\(name): \(FuzzHarness.shared.lastAnswer)")
        }
    }

    @Test func jsonThatParsesReencodesStably() {
        for text in [#"{"a": [1, 2.5, -0, 1e300, "\ud800x", "\u00e9"], "b": null}"#, "5e-324", #""\u0000""#, "[[[]]]"] {
            #expect(FuzzHarness.checkJSON(Array(text.utf8)) == nil, "\(text)")
        }
    }

    @Test func noWorkloadCanRun() {
        // A valid submission is refused: the fuzzing engine has no backends.
        let body = #"{"runtime": "shell", "code": "touch /tmp/kiln-fuzz-ran"}"#
        #expect(FuzzHarness.shared.check([0] + Array(body.utf8)) == nil)
        #expect(FuzzHarness.shared.lastAnswer.hasSuffix("-> 422"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/kiln-fuzz-ran"))
    }
}
