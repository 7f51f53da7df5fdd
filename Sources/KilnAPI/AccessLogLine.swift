import KilnCore
import KilnHTTP

/// The path and query of a request as the access log writes them: never an
/// `access_token`, whatever its letter case or percent-encoding (once, twice or more),
/// in the query or hidden in the path (`/x%3Faccess_token=…`).
enum AccessLogLine {
    static let marker = "access_token"
    static let redacted = "REDACTED"

    static func target(_ target: RequestTarget) -> String {
        switch target.form {
        case .asterisk, .invalid: return target.path
        case .origin, .absolute: break
        }
        var segments: [String] = []
        for segment in target.segments {
            if carriesMarker(segment) {
                // The value may run on into later segments (`%2F`): drop them all.
                segments.append(redacted)
                break
            }
            segments.append(escape(segment, also: "/?#"))
        }
        var text = "/" + segments.joined(separator: "/")
        if !target.query.isEmpty {
            let items = target.query.map { item -> String in
                let decodedName = fullyDecoded(item.name).lowercased()
                let nameMarked = decodedName.contains(marker)
                let name = nameMarked && decodedName != marker ? redacted : escape(item.name, also: "&=#")
                let value = nameMarked || carriesMarker(item.value) ? redacted : escape(item.value, also: "&=#")
                return "\(name)=\(value)"
            }
            text += "?" + items.joined(separator: "&")
        }
        return text
    }

    /// Whether `text`, decoded until it no longer changes and lowercased, names the token.
    static func carriesMarker(_ text: String) -> Bool {
        fullyDecoded(text).lowercased().contains(marker)
    }

    static func fullyDecoded(_ text: String) -> String {
        // %00 is kept by the daemon's decoding; a NUL could not hide a marker anyway.
        String(decoding: PercentDecoding.decodeUntilStable(text.utf8), as: UTF8.self)
    }

    /// Percent-encodes `%`, control characters and `also`, so a logged path or query item
    /// reads back unambiguously.
    static func escape(_ text: String, also: String) -> String {
        let extra = Set(also.utf8)
        var out: [UInt8] = []
        for b in text.utf8 {
            if b < 0x20 || b == 0x7F || b == 0x25 || extra.contains(b) {
                out += Array("%\(b < 16 ? "0" : "")\(String(b, radix: 16, uppercase: true))".utf8)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
