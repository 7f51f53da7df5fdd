import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Reliability check R3: Tests/tools/badrequests.py sends its corpus of bad requests
/// (malformed JSON, wrong types, deep nesting, huge numbers, invalid UTF-8 and NUL bytes,
/// header floods, long URLs, request smuggling, path traversal, slowloris) to a real server
/// over loopback. Each must get its exact status, the server must stay healthy after every
/// one, and none may create a workload.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct BadRequestCorpusTests {
    static let script = "\(KilnServer.packageRoot)/Tests/tools/badrequests.py"

    /// Runs the corpus; returns the number of cases, after recording every failing one.
    func runCorpus(_ s: KilnServer, _ options: [String]) throws -> Int {
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", Self.script, "127.0.0.1:\(s.port)",
                                                                   // Liveness, not speed: a busy CI machine may be slow.
                                                                   "--liveness-timeout", "15", "--answer-timeout", "30"] + options)
        let text = String(decoding: out, as: UTF8.self)
        let lines = text.split(separator: "\n")
        let failures = lines.filter { $0.hasPrefix("FAIL") }
        let summary = lines.last { $0.hasPrefix("summary:") }.map(String.init) ?? "no summary"
        for failure in failures { Issue.record("\(failure)") }
        #expect(status == 0, "\(summary)\n\(String(decoding: err, as: UTF8.self).suffix(2000))")
        #expect(s.process.isRunning, "the server died: \(s.stderrText.suffix(2000))")
        let total = summary.range(of: #"/(\d+) cases"#, options: .regularExpression)
            .flatMap { Int(summary[$0].dropFirst().split(separator: " ")[0]) } ?? 0
        return total
    }

    @Test func everyBadRequestGetsItsStatusWithATokenAndSlowClientsAreDropped() throws {
        // A shorter request deadline than the default 30 s, so that the slow clients are
        // dropped, and checked, sooner.
        let s = try KilnServer.start(env: ["KILN_REQUEST_TIMEOUT_S": "8"], token: "corpus-token")
        let total = try runCorpus(s, ["--token", "corpus-token", "--slow-deadline", "8"])
        #expect(total >= 200, "only \(total) cases ran")
        #expect(s.stop() == 0)
    }

    @Test func everyBadRequestGetsItsStatusWithoutAToken() throws {
        let s = try KilnServer.start()
        let total = try runCorpus(s, ["--no-slow"])
        #expect(total >= 200, "only \(total) cases ran")
        #expect(s.stop() == 0)
    }
}
