import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Requests whose framing is ambiguous (request smuggling) or broken, over raw sockets:
/// Kiln answers 400 with a JSON error and closes, so nothing after the head is read as a
/// next request.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct HTTPFramingTests {
    static let smuggled = "GET /v1/workloads/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"

    func expectRefused(_ s: KilnServer, _ request: String, code: String = "bad_request", status: Int = 400,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try RawHTTP.exchange(port: s.port, request)
        #expect(r.status == status, "\(request.prefix(120))", sourceLocation: sourceLocation)
        #expect(r.header("Content-Type") == "application/json", sourceLocation: sourceLocation)
        #expect((try? JSON.parse(r.body))?["error"]?["code"] == .string(code), "\(r.text)", sourceLocation: sourceLocation)
        #expect(r.closed, "the connection stays open after \(request.prefix(60))", sourceLocation: sourceLocation)
        #expect(!String(decoding: r.extra, as: UTF8.self).contains("HTTP/1.1"), "a second response: \(String(decoding: r.extra, as: UTF8.self).prefix(80))",
                sourceLocation: sourceLocation)
    }

    @Test func ambiguousBodyLengthsAreRefusedAndTheConnectionCloses() throws {
        let s = try KilnServer.start()
        let post = "POST /v1/workloads HTTP/1.1\r\nHost: x\r\n"
        try expectRefused(s, post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + Self.smuggled)
        try expectRefused(s, post + "Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n" + Self.smuggled)
        try expectRefused(s, post + "Content-Length: 2\r\nContent-Length: 51\r\n\r\n{}" + Self.smuggled)
        try expectRefused(s, post + "Content-Length: 2\r\ncontent-length: 2\r\n\r\n{}")
        try expectRefused(s, post + "Content-Length : 48\r\n\r\n" + Self.smuggled)
        try expectRefused(s, "POST /v1/workloads HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        // Anything but exactly `chunked` made libmicrohttpd read the body until the peer
        // closed: the client waited for an answer that never came.
        for te in ["gzip", "gzip, chunked", "chunked, chunked", "identity", "chunk", "\u{0B}chunked"] {
            try expectRefused(s, post + "Transfer-Encoding: \(te)\r\n\r\n0\r\n\r\n")
        }
        try expectRefused(s, post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n")
        // Plain chunked still works (a 422 for the fields, not a framing error).
        let ok = try RawHTTP.exchange(port: s.port, post + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        #expect(ok.status == 422)
        #expect(try s.json("GET", "/v1/stats").1["workloads"]?["total"] == .int(0))
        #expect(try s.request("GET", "/healthz").status == 200)
    }

    @Test func headerNamesAndHostAreChecked() throws {
        let s = try KilnServer.start()
        for bad in ["X A: 1", "X-A\t: 1", "X(A): 1", ": nameless"] {
            // (libmicrohttpd 0.9.75 drops a nameless header when it is the last one.)
            try expectRefused(s, "GET /healthz HTTP/1.1\r\n\(bad)\r\nHost: x\r\n\r\n")
        }
        try expectRefused(s, "GET /healthz HTTP/1.1\r\n\r\n")
        try expectRefused(s, "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        for host in ["a b", "evil.example/x", "user@evil.example", "a\"b"] {
            try expectRefused(s, "GET /healthz HTTP/1.1\r\nHost: \(host)\r\n\r\n")
        }
        // HTTP/1.0 needs no Host; IPv6 literals, ports and an empty Host are valid.
        for ok in ["GET /healthz HTTP/1.0\r\n\r\n", "GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
                   "GET /healthz HTTP/1.1\r\nHost:\r\n\r\n", "GET /healthz HTTP/1.1\r\nHost: kiln.example:80\r\n\r\n"] {
            #expect(try RawHTTP.exchange(port: s.port, ok, closeWait: 0).status == 200, "\(ok)")
        }
    }

    /// libmicrohttpd 0.9.75 glues an obs-fold continuation onto the header's name:
    /// `Content-Length: 2` + ` x` became a header `Content-Lengthx: 2`, the request had no
    /// body, and its body was read as the next request.
    @Test func obsoleteLineFoldingIsRefused() throws {
        let s = try KilnServer.start()
        try expectRefused(s, "POST /v1/workloads HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n x\r\n\r\n{}")
        try expectRefused(s, "POST /v1/workloads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")
        try expectRefused(s, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n 3\r\n\r\n")
        // Blanks around a value are not a fold.
        let ok = try RawHTTP.exchange(port: s.port, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \t  1 \r\nX-B:\r\nX-C:2\r\n\r\n", closeWait: 0)
        #expect(ok.status == 200)
    }

    /// A Content-Length from 2^63 to 2^64 - 1 passed libmicrohttpd's check but not Int():
    /// the server waited for exabytes of body instead of answering 413.
    @Test func contentLengthsBeyondInt64Get413() throws {
        let s = try KilnServer.start()
        for length in ["9223372036854775807", "9223372036854775808", "18446744073709551615"] {
            try expectRefused(s, "POST /v1/workloads HTTP/1.1\r\nHost: x\r\nContent-Length: \(length)\r\n\r\n",
                              code: "body_too_large", status: 413)
        }
    }

    /// `%00` in the path or query stays the three characters: decoded, the NUL ended the
    /// C string libmicrohttpd hands over, so `/v1/workloads/%00` was the list endpoint and
    /// `limit=5%00x` was `limit=5`.
    @Test func percent00IsNotDecoded() throws {
        let s = try KilnServer.start()
        for path in ["/v1/workloads/%00", "/v1/workloads/%00/logs", "/v1/workloads/%00/logs/history"] {
            let r = try s.request("GET", path)
            #expect(r.status == 404, "\(path)")
            #expect(try r.json()["error"]?["message"] == .string("workload %00 not found"), "\(path)")
        }
        #expect(try s.request("DELETE", "/v1/workloads/%00").status == 404)
        #expect(try s.request("GET", "/v1/workloads?limit=5%00x").status == 422)
        #expect(try s.request("GET", "/v1/workloads?status=completed%00").status == 422)
        // Every other escape is still decoded, in the path and the query.
        #expect(try s.request("GET", "/v1/workloads?status=%63ompleted&limit=%35").status == 200)
        #expect(try s.request("GET", "/%68ealthz").status == 200)
    }
}
