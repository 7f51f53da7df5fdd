import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// `KILN_RETENTION` against the real binary: a finished workload older than it goes, with
/// its log, and a running one stays however old it is.
@Suite(.timeLimit(.minutes(5)), .ownThread) struct RetentionTests {
    @Test func finishedWorkloadsOlderThanTheRetentionAreDeletedAndRunningOnesStay() throws {
        let s = try KilnServer.start(env: ["KILN_RETENTION": "2s"])
        let go = "/tmp/kiln-go-\(UUID().uuidString)"
        defer { unlink(go) }
        let running = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "echo kept; while [ ! -e \#(go) ]; do sleep 0.05; done", "resources": {"timeout_s": 120}}"#)
        try s.waitRunning(running)
        let done = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo old"}"#)
        let id = try #require(done["id"]?.stringValue)
        #expect(try s.json("GET", "/v1/workloads/\(id)/logs/history").0 == 200)
        let deadline = Date().addingTimeInterval(30)
        while try s.json("GET", "/v1/workloads/\(id)").0 != 404 {
            try #require(Date() < deadline, "a workload finished 2 s ago was still there after 30 s")
            usleep(100_000)
        }
        #expect(try s.json("GET", "/v1/workloads/\(id)/logs/history").0 == 404)
        // Older than the retention too, but running: untouched, log and all.
        let (code, record) = try s.json("GET", "/v1/workloads/\(running)")
        #expect(code == 200 && record["status"] == .string("running"))
        let lines = try s.json("GET", "/v1/workloads/\(running)/logs/history").1["lines"]?.arrayValue ?? []
        #expect(lines.map { $0["line"] } == [.string("kept")])
        #expect(FileManager.default.createFile(atPath: go, contents: nil))
    }
}
