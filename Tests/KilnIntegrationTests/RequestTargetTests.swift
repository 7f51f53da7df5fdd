import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Request targets against the real server, as a hostile client sends them. Each request
/// is a valid submission: if any handler ran for it, a workload would exist afterwards.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct RequestTargetFormTests {
    static let token = "target-token"
    static let body = #"{"runtime": "shell", "code": "true"}"#

    func send(_ s: KilnServer, _ method: String, _ target: [UInt8], token: String?) throws -> RawHTTP.Reply {
        var head = Array("\(method) ".utf8) + target + Array(" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".utf8)
        if let token { head += Array("Authorization: Bearer \(token)\r\n".utf8) }
        head += Array("Content-Length: \(Self.body.utf8.count)\r\n\r\n\(Self.body)".utf8)
        return try RawHTTP.exchange(port: s.port, head, closeWait: 0.2)
    }

    func workloadCount(_ s: KilnServer) throws -> Int {
        let (status, list) = try s.json("GET", "/v1/workloads?limit=500")
        guard status == 200 else { throw TestFailure("list answered \(status)") }
        return list["workloads"]?.arrayValue?.count ?? -1
    }

    /// (target, status without a token, status with the token). Everything here must
    /// leave no workload behind.
    static let refused: [(String, Int, Int)] = [
        ("x/v1/workloads/async", 400, 400),
        ("v1/workloads/async", 400, 400),
        ("./v1/workloads/async", 400, 400),
        ("../v1/workloads/async", 400, 400),
        ("*", 400, 400),
        ("127.0.0.1:8080", 400, 400),
        ("evil.example:443", 400, 400),
        ("http:/v1/workloads/async", 400, 400),
        ("http:///v1/workloads/async", 400, 400),
        ("http:v1/workloads/async", 400, 400),
        ("ftp://evil.example/v1/workloads/async", 400, 400),
        ("mailto:root@evil.example", 400, 400),
        ("http://user@evil.example/v1/workloads/async", 400, 400),
        ("http://:80/v1/workloads/async", 400, 400),
        ("/v1/workloads/async#x", 400, 400),
        ("/v1/workloads/async?a=1#x", 400, 400),
        ("\\v1\\workloads\\async", 400, 400),
        ("%2Fv1%2Fworkloads%2Fasync", 400, 400),
        ("/v1/workloads/async\t", 400, 400),
        ("/v1/workloads/async\u{0B}", 400, 400),
        ("/v1/workloads/async\u{7F}", 400, 400),
        ("/v1/workloads/\u{E9}", 400, 400),
        // Routed paths that name no route (or another route's id): 401 first under /v1, so
        // routes cannot be mapped without a token.
        ("//v1/workloads/async", 404, 404),
        ("/V1/workloads/async", 404, 404),
        ("/v1%2Fworkloads%2Fasync", 404, 404),
        ("/v1/./workloads/async", 401, 404),
        ("/v1/workloads/../workloads/async", 401, 404),
        ("/v1//workloads/async", 401, 404),
        ("/v1/workloads/async%00", 401, 405),
        ("/v1/workloads/async%3F", 401, 405),
        ("/v1/workloads/async;x", 401, 405),
        ("http://evil.example", 404, 404),
        // The submit route itself, in every spelling, without a token.
        ("/v1/workloads/async?access_token=\(token)", 401, 202),
    ]

    /// Spellings of the submit route that must reach it, and only with the token.
    static let routed: [String] = [
        "/v1/workloads/async",
        "/v1/workloads/async/",
        "/v1/workloads/%61sync",
        "/%76%31/workloads/async",
        "http://evil.example/v1/workloads/async",
        "HTTP://127.0.0.1:1/v1/workloads/async",
        "https://evil.example/v1/workloads/async?x=1",
    ]

    @Test func noTargetFormReachesAHandlerWithoutAValidToken() throws {
        let s = try KilnServer.start(token: Self.token)
        defer { s.stop() }
        var expectedWorkloads = 0
        for (target, withoutToken, _) in Self.refused {
            for token in [nil, "wrong-token"] {
                let r = try send(s, "POST", Array(target.utf8), token: token)
                #expect(r.status == withoutToken, "POST \(target.debugDescription) with token \(token ?? "none"): \(r.status.map(String.init) ?? "no answer") \(r.text)")
                #expect((try? JSON.parse(r.body))?["error"]?["code"]?.stringValue != nil, "no JSON error for \(target.debugDescription)")
            }
        }
        for target in Self.routed {
            for token in [nil, "wrong-token"] {
                let r = try send(s, "POST", Array(target.utf8), token: token)
                #expect(r.status == 401, "POST \(target) with token \(token ?? "none"): \(r.status.map(String.init) ?? "no answer")")
            }
        }
        #expect(try workloadCount(s) == 0, "a request without a valid token created a workload")

        // With the token: the refused forms still run nothing; the routed spellings submit.
        for (target, _, withToken) in Self.refused {
            let r = try send(s, "POST", Array(target.utf8), token: Self.token)
            #expect(r.status == withToken, "POST \(target.debugDescription) with the token: \(r.status.map(String.init) ?? "no answer") \(r.text)")
            if withToken == 202 { expectedWorkloads += 1 }
        }
        #expect(try workloadCount(s) == expectedWorkloads, "a refused target reached the submit handler")
        for target in Self.routed {
            let r = try send(s, "POST", Array(target.utf8), token: Self.token)
            #expect(r.status == 202, "POST \(target) with the token: \(r.status.map(String.init) ?? "no answer") \(r.text)")
        }
        #expect(try workloadCount(s) == expectedWorkloads + Self.routed.count)
    }

    /// Every request gets an answer whatever its query holds: about 58 short parameters used
    /// to exhaust libmicrohttpd's per-connection pool while it split them, and the request
    /// was held for 30 s and closed without one. Kiln's own parse still sees them all.
    @Test func manyQueryParametersStillGetAnAnswer() throws {
        let s = try KilnServer.start()
        for n in [57, 58, 60, 100, 300] {
            let query = (0..<n).map { "a\($0)=1" }.joined(separator: "&")
            let reply = try RawHTTP.exchange(port: s.port, "GET /healthz?\(query) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            #expect(reply.status == 200, "\(n) parameters: \(reply.status.map(String.init) ?? "no answer")")
        }
        // The parameters still count: a filter among many others is applied, and a bad one refused.
        let filler = (0..<80).map { "x\($0)=1" }.joined(separator: "&")
        let (bad, refusal) = try s.json("GET", "/v1/workloads?\(filler)&limit=0")
        #expect(bad == 422 && refusal["error"]?["field"] == .string("limit"), "\(refusal.text)")
        // Past the head limit, still an answer (431), never a silent close.
        let huge = (0..<1000).map { "a\($0)=1" }.joined(separator: "&")
        let tooBig = try RawHTTP.exchange(port: s.port, "GET /healthz?\(huge) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        #expect(tooBig.status == 414 || tooBig.status == 431, "\(tooBig.status.map(String.init) ?? "no answer")")
    }

    @Test func optionsAsteriskIsAnswered204AndOtherMethodsOnAsteriskAre400() throws {
        let s = try KilnServer.start(token: Self.token)
        defer { s.stop() }
        let ok = try RawHTTP.exchange(port: s.port, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ok.status == 204)
        #expect(ok.header("Allow")?.contains("GET") == true)
        for method in ["GET", "POST", "DELETE", "HEAD"] {
            let r = try RawHTTP.exchange(port: s.port, "\(method) * HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(r.status == 400, "\(method) *")
            #expect(r.closed, "\(method) * left the connection open")
        }
    }

    @Test func absoluteFormIsRoutedAsItsPath() throws {
        let s = try KilnServer.start(token: Self.token)
        defer { s.stop() }
        let r = try RawHTTP.exchange(port: s.port, "GET http://other.example/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(Self.token)\r\n\r\n")
        #expect(r.status == 200)
        #expect((try? JSON.parse(r.body))?["workloads"]?["total"] != nil, "\(r.text)")
        let health = try RawHTTP.exchange(port: s.port, "GET http://other.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(health.status == 200)
    }
}
