import Foundation
import Testing
import KilnTestSupport
@testable import KilnHTTP

/// Slow clients (slowloris) against an in-process server with a 1 s request deadline.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct SlowClientTests {
    struct Echo: HTTPResponder {
        func respond(to request: HTTPRequest) -> HTTPResult {
            if let refusal = request.refusal { return .now(HTTPResponse(status: SlowClientTests.status(refusal))) }
            return .now(HTTPResponse(status: 200, body: .bytes(Array("\(request.method) \(request.path) \(request.body.count)".utf8))))
        }
        func completed(_ request: HTTPRequest, status: Int, route: String?, durationNanos: UInt64) {}
    }

    static func status(_ refusal: HTTPRefusal) -> Int {
        switch refusal {
        case .badRequest: return 400
        case .headTooLarge: return 431
        case .bodyTooLarge: return 413
        case .shuttingDown: return 503
        }
    }

    func withServer(_ body: (HTTPServer) throws -> Void) throws {
        let server = HTTPServer(options: .init(host: "127.0.0.1", port: 0, threads: 2, requestTimeoutSeconds: 1,
                                               minBodyBytesPerSecond: 100),
                                responder: Echo())
        try server.start()
        defer { server.stop() }
        try body(server)
    }

    /// Connects and sends `prefix`, then `trickle` a byte every 100 ms; returns the seconds
    /// until the server closed the connection (nil: still open after `limit` seconds).
    func secondsUntilDropped(port: Int, prefix: String, trickle: String?, limit: Double = 6) throws -> Double? {
        let s = try LineSocket(port: port)
        defer { s.close() }
        let t0 = Date()
        s.send(Array(prefix.utf8))
        var i = 0
        while Date().timeIntervalSince(t0) < limit {
            if s.closedWithin(0.1) { return Date().timeIntervalSince(t0) }
            if let trickle, !trickle.isEmpty {
                let bytes = Array(trickle.utf8)
                s.send([bytes[i % bytes.count]])
                i += 1
            }
        }
        return nil
    }

    @Test func clientsThatSendTheirRequestTooSlowlyAreDropped() throws {
        try withServer { server in
            let port = server.boundPort
            let cases: [(String, String?)] = [
                ("", nil),                                                        // silent
                ("GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ", "abcdef"),              // header trickle
                ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n", "x"),  // body at 10 B/s
            ]
            for (prefix, trickle) in cases {
                let t = try secondsUntilDropped(port: port, prefix: prefix, trickle: trickle)
                // Dropped, and not before its 1 s deadline (how late is not asserted: the
                // sweep runs once a second on a machine that may be busy).
                #expect(t != nil && t! >= 0.9, "\(prefix.prefix(30)): \(String(describing: t))")
            }
            #expect(server.droppedSlowClients == 3)
            // Everyone else is served meanwhile, and a body at a good rate is not dropped.
            let r = try RawHTTP.exchange(port: port, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", closeWait: 0)
            #expect(r.status == 200)
        }
    }

    /// A complete request whose answer comes later than the deadline (a synchronous run of
    /// a workload) keeps its connection and gets the answer.
    @Test func aRequestWaitingForItsAnswerIsNotASlowClient() throws {
        struct Later: HTTPResponder {
            func respond(to request: HTTPRequest) -> HTTPResult {
                if let refusal = request.refusal { return .now(HTTPResponse(status: SlowClientTests.status(refusal))) }
                let promise = HTTPPromise()
                DispatchQueue.global().asyncAfter(deadline: .now() + 2.5) {
                    promise.resolve(HTTPResponse(status: 200, body: .bytes(Array("late".utf8))))
                }
                return .later(promise)
            }
            func completed(_ request: HTTPRequest, status: Int, route: String?, durationNanos: UInt64) {}
        }
        let server = HTTPServer(options: .init(host: "127.0.0.1", port: 0, threads: 2, requestTimeoutSeconds: 1,
                                               minBodyBytesPerSecond: 100),
                                responder: Later())
        try server.start()
        defer { server.stop() }
        let s = try LineSocket(port: server.boundPort)
        defer { s.close() }
        s.send(Array("POST /v1/workloads HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}".utf8))
        let answer = s.readAll(timeout: 30, until: "late")
        #expect(answer.contains("HTTP/1.1 200"), "\(answer)")
        #expect(answer.hasSuffix("late"), "\(answer)")
        #expect(server.droppedSlowClients == 0)
    }

    @Test func aBodyAboveTheMinimumRateAndAnAnsweredRequestAreLeftAlone() throws {
        try withServer { server in
            // 1,000 bytes at about 500 B/s: two seconds, past the 1 s base, but each 100 bytes buy a second.
            let s = try LineSocket(port: server.boundPort)
            defer { s.close() }
            s.send(Array("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".utf8))
            for _ in 0..<20 {
                s.send([UInt8](repeating: 120, count: 50))
                usleep(100_000)
            }
            let answer = s.readAll(timeout: 2)
            #expect(answer.contains("HTTP/1.1 200"), "\(answer)")
            #expect(answer.hasSuffix("POST /x 1000"), "\(answer)")
            #expect(server.droppedSlowClients == 0)
        }
    }
}

/// A blocking loopback socket for the tests above.
final class LineSocket {
    let fd: Int32

    init(port: Int) throws {
        fd = try RawHTTP.connect(port: port)
    }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Whether the peer closed within `seconds` (data that arrives is discarded).
    func closedWithin(_ seconds: Double) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(seconds * 1000)) > 0 else { return false }
        var buf = [UInt8](repeating: 0, count: 4096)
        return buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } <= 0
    }

    /// Reads until the connection closes, `timeout` passes or the bytes end with `suffix`.
    func readAll(timeout: Double, until suffix: String = "1000") -> String {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
            if String(decoding: out, as: UTF8.self).hasSuffix(suffix) { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    func close() { Glibc.close(fd) }
}
