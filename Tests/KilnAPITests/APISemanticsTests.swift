import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// API semantics in process (`InProcessKiln`): the same requests the binary answers, with
/// no socket or child server to start. Moved here from the live-binary `APITests`.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct APISemanticsTests {
    @Test func badBodiesGetClearErrors() throws {
        let s = try InProcessKiln()
        let cases: [(String, Int, String?)] = [
            ("", 400, nil),
            ("{", 400, nil),
            ("[1, 2]", 400, nil),
            ("\"text\"", 400, nil),
            (#"{"runtime": "python", "code": "x",}"#, 400, nil),
            (#"{"code": "x"}"#, 422, "runtime"),
            (#"{"runtime": 5, "code": "x"}"#, 422, "runtime"),
            (#"{"runtime": "cobol", "code": "x"}"#, 422, "runtime"),
            (#"{"runtime": "shell"}"#, 422, "code"),
            (#"{"runtime": "shell", "code": ["x"]}"#, 422, "code"),
            (#"{"runtime": "shell", "code": "x", "isolation": "vm"}"#, 422, "isolation"),
            (#"{"runtime": "shell", "code": "x", "resources": {"timeout_s": 0}}"#, 422, "resources.timeout_s"),
            (#"{"runtime": "shell", "code": "x", "resources": {"timeout_s": 1e300}}"#, 422, "resources.timeout_s"),
            (#"{"runtime": "shell", "code": "x", "resources": {"mem_mb": "lots"}}"#, 422, "resources.mem_mb"),
            (#"{"runtime": "shell", "code": "x", "resources": {"cpus": 1.5}}"#, 422, "resources.cpus"),
            (#"{"runtime": "shell", "code": "x", "resources": []}"#, 422, "resources"),
            // Over the server's caps (KILN_MAX_MEM_MB 4096, KILN_MAX_PIDS 4096, KILN_MAX_CPUS cores).
            (#"{"runtime": "shell", "code": "x", "resources": {"mem_mb": 4097}}"#, 422, "resources.mem_mb"),
            (#"{"runtime": "shell", "code": "x", "resources": {"pids": 4097}}"#, 422, "resources.pids"),
            (#"{"runtime": "shell", "code": "x", "resources": {"pids": 7}}"#, 422, "resources.pids"),
            (#"{"runtime": "shell", "code": "x", "resources": {"pids": "many"}}"#, 422, "resources.pids"),
            (#"{"runtime": "shell", "code": "x", "resources": {"cpus": 100000}}"#, 422, "resources.cpus"),
            (#"{"runtime": "shell", "code": "x", "env": {"A": 1}}"#, 422, "env"),
            (#"{"runtime": "shell", "code": "x", "env": {"A=B": "1"}}"#, 422, "env"),
            (#"{"runtime": "shell", "code": "x", "isolation": "gvisor2"}"#, 422, "isolation"),
            (String(repeating: "[", count: 10_000), 400, nil),
            ("{\"runtime\": \"shell\", \"code\": \"x\", \"input\": 1e999}", 400, nil),
        ]
        for (body, status, field) in cases {
            let r = try s.request("POST", "/v1/workloads", body: body)
            #expect(r.status == status, "\(body.prefix(60)) → \(r.status) \(r.text)")
            let e = try r.json()["error"]
            #expect(e?["code"]?.stringValue?.isEmpty == false)
            #expect(e?["message"]?.stringValue?.isEmpty == false)
            if let field { #expect(e?["field"] == .string(field), "\(body)") }
        }
        // A refusal over a cap names the cap.
        let over = try s.request("POST", "/v1/workloads", body: #"{"runtime": "shell", "code": "x", "resources": {"mem_mb": 4097}}"#)
        #expect(try over.json()["error"]?["message"]?.stringValue?.contains("KILN_MAX_MEM_MB") == true, "\(over.text)")
        // Invalid UTF-8 and NUL bytes.
        let bad = try s.request("POST", "/v1/workloads", body: Array(#"{"runtime": "shell", "code": ""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8))
        #expect(bad.status == 400)
        let nul = try s.request("POST", "/v1/workloads", body: Array(#"{"runtime": "shell", "code": "a"#.utf8) + [0] + Array(#""}"#.utf8))
        #expect(nul.status == 400)
        // Still alive.
        #expect(try s.request("GET", "/healthz").status == 200)
    }


    @Test func unavailableIsolationNamesTheAvailableOnes() throws {
        // isolate is allowed but not built into this engine: unavailable, naming process.
        let s = try InProcessKiln(env: ["KILN_ISOLATION": "process,isolate"])
        let r = try s.request("POST", "/v1/workloads", body: #"{"runtime": "shell", "code": "true", "isolation": "isolate"}"#)
        #expect(r.status == 422)
        let message = try r.json()["error"]?["message"]?.stringValue ?? ""
        #expect(message.contains("process"))
    }


    @Test func unknownIdsPathsAndMethods() throws {
        let s = try InProcessKiln()
        let missing = try s.request("GET", "/v1/workloads/01M8BKXHHPAZQSGBQTA3DEZGVK")
        #expect(missing.status == 404)
        #expect(try missing.json()["error"]?["code"] == .string("not_found"))
        #expect(try s.request("GET", "/v1/workloads/..%2F..%2Fetc%2Fpasswd").status == 404)
        #expect(try s.request("GET", "/v1/nothing").status == 404)
        #expect(try s.request("DELETE", "/v1/workloads/nope").status == 404)
        #expect(try s.request("GET", "/v1/workloads/nope/logs/history").status == 404)
        let wrong = try s.request("PUT", "/v1/workloads")
        #expect(wrong.status == 405)
        #expect(wrong.header("Allow")?.contains("POST") == true)
        #expect(wrong.header("Allow")?.contains("GET") == true)
        #expect(try wrong.json()["error"]?["code"] == .string("method_not_allowed"))
        let wrongDelete = try s.request("POST", "/v1/workloads/abc")
        #expect(wrongDelete.status == 405)
        #expect(wrongDelete.header("Allow")?.contains("DELETE") == true)
        // Allow lists only what works on the path: /v1/workloads/async is not a workload id.
        let wrongAsync = try s.request("PUT", "/v1/workloads/async")
        #expect(wrongAsync.status == 405 && wrongAsync.header("Allow") == "POST", "\(wrongAsync.header("Allow") ?? "no Allow")")
        #expect(try s.request("GET", "/v1/workloads/async").status == 405)
    }


    @Test func listPaginatesNewestFirstAndFilters() throws {
        let s = try InProcessKiln()
        var ids: [String] = []
        for i in 0..<5 {
            let runtime = i % 2 == 0 ? "shell" : "python"
            let code = runtime == "shell" ? "exit \(i % 3 == 0 ? 0 : 1)" : "print(\(i))"
            ids.append(try s.run(#"{"runtime": "\#(runtime)", "isolation": "process", "code": "\#(code)"}"#)["id"]!.stringValue!)
        }
        var seen: [String] = []
        var cursor: String? = nil
        repeat {
            let path = "/v1/workloads?limit=2" + (cursor.map { "&cursor=\($0)" } ?? "")
            let (status, page) = try s.json("GET", path)
            #expect(status == 200)
            let items = page["workloads"]?.arrayValue ?? []
            #expect(items.count <= 2)
            seen += items.compactMap { $0["id"]?.stringValue }
            cursor = page["next_cursor"]?.stringValue
        } while cursor != nil
        #expect(seen == ids.reversed())
        let (_, py) = try s.json("GET", "/v1/workloads?runtime=python")
        #expect(py["workloads"]?.arrayValue?.count == 2)
        let (_, failed) = try s.json("GET", "/v1/workloads?status=failed&runtime=shell")
        #expect(failed["workloads"]?.arrayValue?.count == 2)
        let (_, process) = try s.json("GET", "/v1/workloads?isolation=process")
        #expect(process["workloads"]?.arrayValue?.count == 5)
        let (_, gvisor) = try s.json("GET", "/v1/workloads?isolation=gvisor")
        #expect(gvisor["workloads"]?.arrayValue?.isEmpty == true)
        // isolation filters by the backend used, which is never auto: an empty page, not an error.
        let (autoStatus, auto) = try s.json("GET", "/v1/workloads?isolation=auto")
        #expect(autoStatus == 200 && auto["workloads"]?.arrayValue?.isEmpty == true)
        for bad in ["limit=0", "limit=501", "limit=x", "status=done", "runtime=go", "cursor=../x", "isolation=nope"] {
            let r = try s.request("GET", "/v1/workloads?\(bad)")
            #expect(r.status == 422, "\(bad)")
        }
    }


    @Test func purgeDeletesTheRecordAndItsLogAndKillsARunningOneFirst() throws {
        let s = try InProcessKiln()
        let done = try s.run(#"{"runtime": "shell", "code": "echo kept; echo more"}"#)["id"]!.stringValue!
        #expect(try s.request("DELETE", "/v1/workloads/\(done)?purge=yes").status == 422)
        let purged = try s.request("DELETE", "/v1/workloads/\(done)?purge=true")
        #expect(purged.status == 204, "\(purged.text)")
        #expect(try s.request("GET", "/v1/workloads/\(done)").status == 404)
        #expect(try s.request("GET", "/v1/workloads/\(done)/logs/history").status == 404)
        #expect(try s.request("DELETE", "/v1/workloads/\(done)?purge=true").status == 404)
        #expect(try s.json("GET", "/v1/workloads").1["workloads"]?.arrayValue?.contains { $0["id"] == .string(done) } == false)
        // A running one: killed, then deleted.
        let (_, accepted) = try s.json("POST", "/v1/workloads/async", body: #"{"runtime": "shell", "code": "echo up; sleep 600"}"#)
        let running = accepted["id"]!.stringValue!
        var up = false
        for _ in 0..<500 where !up {
            up = try s.json("GET", "/v1/workloads/\(running)").1["status"] == .string("running")
            if !up { usleep(10_000) }
        }
        #expect(up)
        #expect(try s.request("DELETE", "/v1/workloads/\(running)?purge=true").status == 204)
        #expect(try s.request("GET", "/v1/workloads/\(running)").status == 404)
        #expect(try s.json("GET", "/v1/stats").1["workloads"]?["total"] == .int(0))
    }

    @Test func historyPaginatesAndSaysWhenComplete() throws {
        let s = try InProcessKiln()
        let r = try s.run(#"{"runtime": "shell", "code": "i=1; while [ $i -le 25 ]; do echo line $i; i=$((i+1)); done; echo err >&2"}"#)
        let id = r["id"]!.stringValue!
        var after: Int64 = 0
        var all: [JSON] = []
        var pages = 0
        while true {
            let (status, page) = try s.json("GET", "/v1/workloads/\(id)/logs/history?after=\(after)&limit=10")
            #expect(status == 200)
            pages += 1
            all += page["lines"]?.arrayValue ?? []
            if page["complete"] == .bool(true) {
                #expect(page["next_after"] == .null)
                break
            }
            after = try #require(page["next_after"]?.int64Value)
            if pages > 10 { break }
        }
        #expect(pages == 3)
        try #require(all.count == 26)
        #expect(all.map { $0["seq"]?.int64Value ?? 0 } == (1...26).map { Int64($0) })
        #expect(all[0]["line"] == .string("line 1"))
        #expect(all[0]["stream"] == .string("stdout"))
        #expect(all[25]["stream"] == .string("stderr"))
        #expect(all[0]["ts"]?.stringValue?.hasSuffix("Z") == true)
        for bad in ["after=-1", "limit=0", "limit=10001", "after=x"] {
            #expect(try s.request("GET", "/v1/workloads/\(id)/logs/history?\(bad)").status == 422, "\(bad)")
        }
    }


    @Test func corsAnswersListedOriginsOnly() throws {
        let s = try InProcessKiln(env: ["KILN_CORS_ORIGINS": "http://localhost:3000, https://app.example"])
        let ok = try s.request("GET", "/v1/workloads", headers: ["Origin": "https://app.example"])
        #expect(ok.header("Access-Control-Allow-Origin") == "https://app.example")
        #expect(ok.header("Vary") == "Origin")
        let other = try s.request("GET", "/v1/workloads", headers: ["Origin": "http://127.0.0.1:3000"])
        #expect(other.header("Access-Control-Allow-Origin") == nil)
        let err = try s.request("GET", "/v1/workloads/nope", headers: ["Origin": "http://localhost:3000"])
        #expect(err.status == 404)
        #expect(err.header("Access-Control-Allow-Origin") == "http://localhost:3000")
        let pre = try s.request("OPTIONS", "/v1/workloads", headers: ["Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"])
        #expect(pre.status == 204)
        #expect(pre.header("Access-Control-Allow-Methods")?.contains("POST") == true)
        let allowed = pre.header("Access-Control-Allow-Headers") ?? ""
        for h in ["Authorization", "Content-Type", "Last-Event-ID"] { #expect(allowed.contains(h)) }
        let star = try InProcessKiln(env: ["KILN_CORS_ORIGINS": "*"])
        #expect(try star.request("GET", "/healthz", headers: ["Origin": "http://x.example"]).header("Access-Control-Allow-Origin") == "*")
    }
}
