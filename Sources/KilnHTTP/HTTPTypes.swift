internal import CMicroHTTPD
import Foundation

/// One HTTP request as the daemon received it, body complete.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The request target, parsed once (`RequestTarget`): routing and authentication read it.
    public var target: RequestTarget
    /// Query arguments, decoded. A repeated key keeps its first value.
    public var query: [String: String]
    /// Header names are lowercased.
    public var headers: [String: String]
    public var body: [UInt8]
    public var requestID: String
    /// Set when the HTTP layer refused the request before it was complete: the responder
    /// answers with an error at once, and is never asked to route it.
    public var refusal: HTTPRefusal?

    /// The decoded path, for messages and logs.
    public var path: String { target.path }

    public init(method: String, target: RequestTarget, headers: [String: String] = [:], body: [UInt8] = [],
                requestID: String = "") {
        self.method = method
        self.target = target
        var query: [String: String] = [:]
        for item in target.query where query[item.name] == nil { query[item.name] = item.value }
        self.query = query
        self.headers = headers
        self.body = body
        self.requestID = requestID
    }

    /// An origin-form request from a decoded path (tests and in-process callers).
    public init(method: String, path: String, query: [String: String] = [:],
                headers: [String: String] = [:], body: [UInt8] = [], requestID: String = "") {
        let items = query.keys.sorted().map { RequestTarget.QueryItem(name: $0, value: query[$0]!) }
        self.init(method: method, target: RequestTarget(decodedPath: path, query: items), headers: headers, body: body,
                  requestID: requestID)
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// What a streaming body hands the daemon when it is asked for more bytes.
public enum StreamRead: Sendable {
    /// Bytes to send now (never empty).
    case bytes([UInt8])
    /// Nothing to send yet: the connection is suspended until `wake` is called.
    case wait
    /// The response is complete.
    case end
}

/// A response body produced on demand, for Server-Sent Events.
///
/// The daemon calls `read` on its own threads, one call at a time per stream. When
/// `read` answers `.wait`, the connection is suspended; the source calls the waker it
/// was given in `attach` when it has something new, from any thread.
public protocol HTTPStreamSource: AnyObject, Sendable {
    /// Called once, before the first `read`.
    func attach(waker: @escaping @Sendable () -> Void)
    func read(max: Int) -> StreamRead
    /// The connection is finished (completed, failed or the client went away).
    func close()
}

public enum HTTPBody: Sendable {
    case bytes([UInt8])
    case stream(any HTTPStreamSource)
}

/// Why the HTTP layer refused a request before any route saw it.
public enum HTTPRefusal: Sendable, Equatable {
    /// Ambiguous framing (`RequestFraming`) or a request target that is not origin-form or
    /// absolute-form (`RequestTarget`); the connection closes after the answer.
    case badRequest(String)
    /// The request line and headers pass `Options.maxHeadBytes`; the connection closes.
    case headTooLarge(limit: Int)
    /// The body passes `Options.maxBodyBytes`; the connection closes.
    case bodyTooLarge(limit: Int)
    /// The server stops while the request waits for its answer.
    case shuttingDown

    /// Whether the connection closes after the answer.
    public var closes: Bool { self != .shuttingDown }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: HTTPBody
    /// The route template that answered, for the access log and metrics (nil: none did).
    public var route: String?

    public init(status: Int, headers: [(String, String)] = [], body: HTTPBody = .bytes([])) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public mutating func setHeader(_ name: String, _ value: String) {
        headers.removeAll { $0.0.lowercased() == name.lowercased() }
        headers.append((name, value))
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// A response that is ready later: the connection stays suspended, holding no
/// daemon thread, until `resolve` is called once from any thread.
public final class HTTPPromise: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var value: HTTPResponse?
    private var onResolve: (@Sendable (HTTPResponse) -> Void)?

    public init() {}

    public func resolve(_ response: HTTPResponse) {
        lock.lock()
        guard value == nil else { lock.unlock(); return }
        value = response
        let callback = onResolve
        onResolve = nil
        lock.unlock()
        callback?(response)
    }

    /// Calls `callback` once with the response: now if it is already there, else on `resolve`.
    public func onResolve(_ callback: @escaping @Sendable (HTTPResponse) -> Void) {
        if let value = observe(callback) { callback(value) }
    }

    /// Registers the daemon's continuation. Returns the response at once when it is already there.
    func observe(_ callback: @escaping @Sendable (HTTPResponse) -> Void) -> HTTPResponse? {
        lock.lock()
        defer { lock.unlock() }
        if let value { return value }
        onResolve = callback
        return nil
    }
}

public enum HTTPResult: Sendable {
    case now(HTTPResponse)
    case later(HTTPPromise)
}

/// The application side of the daemon.
public protocol HTTPResponder: Sendable {
    /// Answers a request. A request with a `refusal` must be answered `.now` (the daemon
    /// renders nothing itself).
    func respond(to request: HTTPRequest) -> HTTPResult
    /// Called once per finished request, with the status and route sent, for the access
    /// log and metrics.
    func completed(_ request: HTTPRequest, status: Int, route: String?, durationNanos: UInt64)
}

/// The daemon's percent-decoding of paths and query values (`kiln_mhd_unescape`, which
/// libmicrohttpd calls), for code that must decode exactly as the server does (the fuzz
/// harness). The input ends at its first NUL, as a C string does.
public enum PercentDecoding {
    public static func decode<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var buffer = bytes.prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0]
        let n = buffer.withUnsafeMutableBufferPointer { kiln_mhd_unescape(nil, nil, $0.baseAddress) }
        return buffer[0..<n].map { UInt8(bitPattern: $0) }
    }

    /// Decodes again and again until nothing changes (at most eight rounds): what a value
    /// means however many times it was encoded.
    public static func decodeUntilStable<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var current = Array(bytes)
        for _ in 0..<8 {
            let next = decode(current)
            if next == current { break }
            current = next
        }
        return current
    }
}
