import KilnCore
import KilnHTTP

/// An error answer: `{"error": {"code", "message", "field"}}`.
public struct APIError: Error, Sendable {
    public var status: Int
    public var code: String
    public var message: String
    public var field: String?
    public var headers: [(String, String)] = []

    public init(_ status: Int, _ code: String, _ message: String, field: String? = nil, headers: [(String, String)] = []) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
    }

    public var response: HTTPResponse {
        var members: [(String, JSON)] = [("code", .string(code)), ("message", .string(message))]
        if let field { members.append(("field", .string(field))) }
        var r = HTTPResponse.json(status, .object([("error", .object(members))]))
        r.headers.append(contentsOf: headers)
        return r
    }

    static func invalid(_ field: String, _ message: String) -> APIError {
        APIError(422, "invalid_field", message, field: field)
    }
}

extension HTTPResponse {
    public static func json(_ status: Int, _ value: JSON, headers: [(String, String)] = []) -> HTTPResponse {
        var body = value.encoded()
        body.append(0x0A)
        return HTTPResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: .bytes(body))
    }
}
