/// What libmicrohttpd leaves to the application about a request's framing. It parses the
/// request line and headers, but takes the first of several Content-Length headers, lets
/// Transfer-Encoding win over Content-Length without closing the connection afterwards,
/// reads a body of unknown length until the peer closes when Transfer-Encoding is anything
/// but `chunked`, keeps a header whose name has white space before the colon under that
/// name, glues an obs-fold continuation line onto the header's name, and does not require
/// Host. Each of those lets a front end and Kiln disagree on
/// where a request ends (request smuggling), so such a request is refused with 400 and the
/// connection is closed (RFC 9112 sections 3.2, 5.1, 6.1 and 6.3).
public enum RequestFraming {
    /// Why the request is refused, or nil when its framing is sound. `headers` are the
    /// header lines as received (name not lowercased, duplicates kept, in order);
    /// `version` is the request line's version, `HTTP/1.0` or `HTTP/1.1`; `folded` says a
    /// header line was continued on the next one (obs-fold).
    public static func problem(version: String, headers: [(name: String, value: String)], folded: Bool = false) -> String? {
        if folded { return "a header line continued on the next line (obsolete line folding)" }
        var contentLengths = 0
        var transferEncodings: [String] = []
        var hosts: [String] = []
        for (name, value) in headers {
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
                return "invalid header name \(shown(name)): a header name is a token, without white space"
            }
            switch name.lowercased() {
            case "content-length": contentLengths += 1
            case "transfer-encoding": transferEncodings.append(value)
            case "host": hosts.append(value)
            default: break
            }
        }
        if contentLengths > 1 { return "more than one Content-Length header" }
        if !transferEncodings.isEmpty {
            if contentLengths > 0 { return "both Content-Length and Transfer-Encoding" }
            if version == "HTTP/1.0" { return "Transfer-Encoding in an HTTP/1.0 request" }
            // libmicrohttpd decodes exactly `chunked` (any case) and nothing else.
            if transferEncodings.count > 1 || transferEncodings[0].lowercased() != "chunked" {
                let all = transferEncodings.map(shown).joined(separator: ", ")
                return "unsupported Transfer-Encoding \(all): only chunked is accepted"
            }
        }
        if hosts.count > 1 { return "more than one Host header" }
        if hosts.isEmpty, version != "HTTP/1.0" { return "an HTTP/1.1 request needs a Host header" }
        // libmicrohttpd keeps white space after a value; RFC 9112 says it is not part of it.
        // (Not so for Transfer-Encoding above: libmicrohttpd would not decode `chunked ` as
        // chunked, so a padded one is refused rather than read to the end of the connection.)
        if let host = hosts.first.map(trimmingOWS), !host.utf8.allSatisfy(isHostByte) {
            return "invalid Host header \(shown(host))"
        }
        return nil
    }

    /// The value without leading and trailing spaces and tabs (optional white space).
    static func trimmingOWS(_ s: String) -> String {
        let ows: Set<Character> = [" ", "\t"]
        return String(s.drop { ows.contains($0) }.reversed().drop { ows.contains($0) }.reversed())
    }

    /// RFC 9110 token characters.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    /// uri-host [":" port]: unreserved, percent-encoded, sub-delims, ':' and IPv6 brackets.
    static func isHostByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "-._~%!$&'()*+,;=:[]".utf8.contains(b)
        }
    }

    /// A name or value for a message: quoted, at most 64 characters.
    static func shown(_ s: String) -> String {
        let cut = s.count > 64 ? String(s.prefix(64)) + "…" : s
        return "\"\(cut)\""
    }
}
