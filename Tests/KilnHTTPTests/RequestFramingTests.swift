import KilnTestSupport
import Testing
@testable import KilnHTTP

/// The framing rules Kiln adds to libmicrohttpd's parser (request smuggling, RFC 9112).
@Suite(.timeLimit(.minutes(10)), .ownThread) struct RequestFramingTests {
    func problem(_ headers: [(String, String)], version: String = "HTTP/1.1", folded: Bool = false) -> String? {
        RequestFraming.problem(version: version, headers: headers.map { (name: $0.0, value: $0.1) }, folded: folded)
    }

    @Test func soundRequestsPass() {
        #expect(problem([("Host", "kiln.example")]) == nil)
        #expect(problem([("Host", "127.0.0.1:8080"), ("Content-Length", "12")]) == nil)
        #expect(problem([("Host", "[::1]:8080"), ("Transfer-Encoding", "chunked")]) == nil)
        #expect(problem([("host", "a"), ("TRANSFER-ENCODING", "Chunked")]) == nil)
        #expect(problem([("Host", "")]) == nil)
        // White space around a value is not part of it (libmicrohttpd keeps what follows).
        #expect(problem([("Host", "kiln.example ")]) == nil)
        #expect(problem([("Host", "kiln.example:8080\t")]) == nil)
        #expect(problem([], version: "HTTP/1.0") == nil)
        #expect(problem([("Host", "a"), ("X-Weird!#$%&'*+-.^_`|~", "1"), ("X-Same", "1"), ("X-Same", "2")]) == nil)
    }

    @Test func ambiguousBodyLengthsAreRefused() {
        #expect(problem([("Host", "a"), ("Content-Length", "1"), ("Transfer-Encoding", "chunked")]) != nil)
        #expect(problem([("Host", "a"), ("Content-Length", "1"), ("content-length", "1")]) != nil)
        #expect(problem([("Transfer-Encoding", "chunked")], version: "HTTP/1.0") != nil)
        for te in ["gzip", "gzip, chunked", "chunked, chunked", "identity", "", " chunked", "chunked "] {
            #expect(problem([("Host", "a"), ("Transfer-Encoding", te)]) != nil, "\(te)")
        }
        #expect(problem([("Host", "a"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]) != nil)
    }

    @Test func badNamesFoldsAndHostsAreRefused() {
        for name in ["", "Content-Length ", "X A", "X\tA", "X(A)", "X:A", "Ünicode", "X\u{7F}"] {
            #expect(problem([("Host", "a"), (name, "1")]) != nil, "\(name)")
        }
        #expect(problem([("Host", "a")], folded: true) != nil)
        #expect(problem([]) != nil)
        #expect(problem([("Host", "a"), ("Host", "a")]) != nil)
        for host in ["a b", "a/b", "u@a", "a?b", "a#b", "\"a\"", "a\\b", "é"] {
            #expect(problem([("Host", host)]) != nil, "\(host)")
        }
    }
}
