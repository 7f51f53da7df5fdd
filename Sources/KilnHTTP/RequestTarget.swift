/// A request target (RFC 9112 section 3.2), parsed once from the bytes of the request
/// line. Authentication, routing and the access log all read this one value, so no part
/// of the server can see a different path than another.
///
/// - origin-form (`/path?query`) is routed as it is;
/// - absolute-form (`http://host/path?query`) is treated as its path and query;
/// - asterisk-form (`*`) is kept for `OPTIONS` only;
/// - everything else (no leading `/`, `*` with another method, authority-form, a scheme
///   without a host, a fragment, a control character, a space or a raw byte above 0x7F)
///   is refused.
///
/// The path is split into segments *before* each is percent-decoded, so `%2F` stays
/// inside its segment and can never create or remove one. Decoding is the daemon's
/// (`PercentDecoding`): `%00` stays the three characters.
public struct RequestTarget: Sendable, Equatable {
    public enum Form: String, Sendable, Equatable {
        case origin, absolute, asterisk
        /// A target that was refused: the request is answered 400 and never routed.
        case invalid
    }

    public struct QueryItem: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public var form: Form
    /// Decoded path segments after the leading slash: `/` is `[""]`, `/a/b` is `["a", "b"]`.
    /// Empty for asterisk-form.
    public var segments: [String]
    /// Query items in the order sent, decoded as libmicrohttpd decodes them (`+` is a space).
    public var query: [QueryItem]

    public init(form: Form, segments: [String], query: [QueryItem]) {
        self.form = form
        self.segments = segments
        self.query = query
    }

    /// The decoded path, `/` joined: for messages and the access log, never for routing.
    public var path: String {
        switch form {
        case .asterisk: return "*"
        case .invalid: return "(invalid target)"
        case .origin, .absolute: return "/" + segments.joined(separator: "/")
        }
    }

    /// What a refused target becomes, so that its 400 can be answered and logged.
    public static let invalid = RequestTarget(form: .invalid, segments: [], query: [])

    /// An origin-form target from a decoded path (tests and in-process callers).
    public init(decodedPath: String, query: [QueryItem] = []) {
        let trimmed = decodedPath.hasPrefix("/") ? decodedPath.dropFirst() : Substring(decodedPath)
        self.init(form: .origin, segments: trimmed.split(separator: "/", omittingEmptySubsequences: false).map(String.init),
                  query: query)
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case badCharacter(UInt8)
        case fragment
        case asteriskWithMethod(String)
        case notOriginForm
        case badScheme
        case missingHost

        public var description: String {
            switch self {
            case .empty: return "the request target is empty"
            case .badCharacter(let b): return "the request target contains the byte 0x\(String(b, radix: 16)), which must be percent-encoded"
            case .fragment: return "the request target contains a fragment (#)"
            case .asteriskWithMethod(let m): return "the request target * is only allowed with OPTIONS, not \(m)"
            case .notOriginForm: return "the request target must start with / (or be an absolute http URL)"
            case .badScheme: return "an absolute request target must use http or https"
            case .missingHost: return "an absolute request target must name a host"
            }
        }
    }

    /// Parses the target exactly as it appeared in the request line.
    public static func parse<Bytes: Collection>(_ raw: Bytes, method: String) -> Result<RequestTarget, ParseError> where Bytes.Element == UInt8 {
        let bytes = Array(raw)
        guard !bytes.isEmpty else { return .failure(.empty) }
        for b in bytes where b <= 0x20 || b >= 0x7F {
            return .failure(.badCharacter(b))
        }
        if bytes.contains(UInt8(ascii: "#")) { return .failure(.fragment) }
        if bytes == [UInt8(ascii: "*")] {
            return method == "OPTIONS" ? .success(RequestTarget(form: .asterisk, segments: [], query: []))
                                       : .failure(.asteriskWithMethod(method))
        }
        var form = Form.origin
        var rest = bytes[...]
        if bytes.first != UInt8(ascii: "/") {
            // absolute-form: scheme "://" authority path-abempty [ "?" query ]
            guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return .failure(.notOriginForm) }
            let scheme = String(decoding: bytes[..<colon], as: UTF8.self).lowercased()
            guard scheme == "http" || scheme == "https" else {
                let isScheme = scheme.first.map { $0.isASCII && $0.isLetter } == true
                    && scheme.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) }
                return isScheme
                    ? .failure(.badScheme) : .failure(.notOriginForm)
            }
            let afterScheme = bytes[(colon + 1)...]
            guard afterScheme.starts(with: Array("//".utf8)) else { return .failure(.missingHost) }
            let authorityStart = afterScheme.startIndex + 2
            let authorityEnd = bytes[authorityStart...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? bytes.endIndex
            let authority = bytes[authorityStart..<authorityEnd]
            // A host is required; userinfo (`user@host`) is not part of an HTTP target.
            guard !authority.isEmpty, !authority.contains(UInt8(ascii: "@")),
                  authority.first != UInt8(ascii: ":") else { return .failure(.missingHost) }
            form = .absolute
            rest = bytes[authorityEnd...]
            if rest.first != UInt8(ascii: "/") {
                // path-abempty may be empty: the path is then "/" (RFC 9112 section 3.2.2).
                rest = ArraySlice(Array("/".utf8) + Array(rest))
            }
        }
        let pathBytes: ArraySlice<UInt8>
        var queryBytes: ArraySlice<UInt8>? = nil
        if let q = rest.firstIndex(of: UInt8(ascii: "?")) {
            pathBytes = rest[rest.startIndex..<q]
            queryBytes = rest[(q + 1)...]
        } else {
            pathBytes = rest
        }
        let segments = pathBytes.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { decode($0, plusIsSpace: false) }
        return .success(RequestTarget(form: form, segments: segments, query: queryBytes.map(parseQuery) ?? []))
    }

    /// `a=1&b&c=` → (a, 1), (b, ""), (c, ""); empty pieces are skipped, as libmicrohttpd does.
    static func parseQuery(_ bytes: ArraySlice<UInt8>) -> [QueryItem] {
        bytes.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true).map { piece in
            if let eq = piece.firstIndex(of: UInt8(ascii: "=")) {
                return QueryItem(name: decode(piece[piece.startIndex..<eq], plusIsSpace: true),
                                 value: decode(piece[(eq + 1)...], plusIsSpace: true))
            }
            return QueryItem(name: decode(piece, plusIsSpace: true), value: "")
        }
    }

    static func decode(_ bytes: ArraySlice<UInt8>, plusIsSpace: Bool) -> String {
        let plain = plusIsSpace ? bytes.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: " ") : $0 } : Array(bytes)
        return String(decoding: PercentDecoding.decode(plain), as: UTF8.self)
    }
}
