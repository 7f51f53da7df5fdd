import KilnTestSupport
import Testing
@testable import KilnHTTP

/// The request target is parsed once (RFC 9112 section 3.2): what routing and
/// authentication see comes from here.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct RequestTargetTests {
    func parse(_ raw: String, _ method: String = "GET") -> Result<RequestTarget, RequestTarget.ParseError> {
        RequestTarget.parse(Array(raw.utf8), method: method)
    }

    @Test func originFormIsSplitBeforeItIsDecoded() throws {
        let t = try parse("/v1/workloads/a%2Fb/logs?x=1&y=%41+B&flag&=v&&z=").get()
        #expect(t.form == .origin)
        #expect(t.segments == ["v1", "workloads", "a/b", "logs"])
        #expect(t.query == [.init(name: "x", value: "1"), .init(name: "y", value: "A B"), .init(name: "flag", value: ""),
                            .init(name: "", value: "v"), .init(name: "z", value: "")])
        #expect(try parse("/").get().segments == [""])
        #expect(try parse("//v1").get().segments == ["", "v1"])
        // %00 stays the three characters, as the daemon decodes it.
        #expect(try parse("/v1/workloads/%00").get().segments == ["v1", "workloads", "%00"])
        #expect(try parse("/%76%31/stats").get().segments == ["v1", "stats"])
    }

    @Test func absoluteFormBecomesItsPath() throws {
        for raw in ["http://h/v1/stats?a=1", "HTTP://h:8080/v1/stats?a=1", "https://h.example/v1/stats?a=1"] {
            let t = try parse(raw).get()
            #expect(t.form == .absolute, "\(raw)")
            #expect(t.segments == ["v1", "stats"], "\(raw)")
            #expect(t.query == [.init(name: "a", value: "1")], "\(raw)")
        }
        #expect(try parse("http://h").get().segments == [""])
        #expect(try parse("http://h?q=1").get().query == [.init(name: "q", value: "1")])
    }

    @Test func asteriskIsForOptionsOnly() throws {
        #expect(try parse("*", "OPTIONS").get().form == .asterisk)
        #expect(parse("*", "GET") == .failure(.asteriskWithMethod("GET")))
        #expect(parse("*", "POST") == .failure(.asteriskWithMethod("POST")))
        #expect(parse("*/v1/stats", "OPTIONS") == .failure(.notOriginForm))
    }

    @Test func everyOtherFormIsRefused() {
        let refused: [(String, RequestTarget.ParseError)] = [
            ("", .empty),
            ("x/v1/workloads", .notOriginForm),
            ("v1/workloads", .notOriginForm),
            ("./v1/workloads", .notOriginForm),
            ("%2Fv1%2Fworkloads", .notOriginForm),
            ("\\v1\\workloads", .notOriginForm),
            ("evil.example:443", .badScheme),
            ("127.0.0.1:8080", .notOriginForm),
            ("http:/v1/workloads", .missingHost),
            ("http:///v1/workloads", .missingHost),
            ("http:v1/workloads", .missingHost),
            ("http://user@h/v1", .missingHost),
            ("http://:80/v1", .missingHost),
            ("ftp://h/v1/workloads", .badScheme),
            ("mailto:root@h", .badScheme),
            ("/v1/workloads#frag", .fragment),
            ("/v1/work loads", .badCharacter(0x20)),
            ("/v1/work\tloads", .badCharacter(0x09)),
            ("/v1/\u{7F}", .badCharacter(0x7F)),
            ("/v1/\u{E9}", .badCharacter(0xC3)),
        ]
        for (raw, why) in refused {
            #expect(parse(raw, "POST") == .failure(why), "\(raw)")
        }
    }

    @Test func theLoggedPathIsTheDecodedOne() throws {
        #expect(try parse("/v1/workloads/%41").get().path == "/v1/workloads/A")
        #expect(RequestTarget.invalid.path == "(invalid target)")
        #expect(try parse("*", "OPTIONS").get().path == "*")
    }
}
