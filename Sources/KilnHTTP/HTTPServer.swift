internal import CMicroHTTPD
import Foundation

public struct HTTPServerError: Error, CustomStringConvertible {
    public var description: String
}

/// The libmicrohttpd daemon: epoll internal thread with a thread pool, suspend/resume
/// for deferred and streaming responses. The only place that talks to libmicrohttpd.
public final class HTTPServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var host: String
        public var port: Int
        public var threads: Int
        public var maxBodyBytes: Int
        /// libmicrohttpd's memory pool per connection: it holds the request head while it
        /// is read, then the write buffer that chunks are built in. It is the largest part of
        /// an idle stream's memory (issue 6, B2: with 16 KiB, 16 KB per stream besides the
        /// response block; with 4 KiB, 7.4 KB in all). 4 KiB holds a request line and headers of up to about 3.7 KiB; longer
        /// ones are answered 414 or 431 by libmicrohttpd (or, just past that, the connection
        /// is closed: its own answer no longer fits either).
        public var connectionMemoryLimit: Int
        /// A request whose line and headers pass this many bytes gets `headTooLarge` (431):
        /// what is left of the pool must still hold the response's headers and a stream's
        /// chunks (a log stream needs about 400 bytes more than a plain answer).
        public var maxHeadBytes: Int
        public var connectionLimit: Int
        /// Idle connections (not suspended) are closed after this long.
        public var connectionTimeoutSeconds: Int
        /// The block an HTTP/1.0 client's stream is read into (HTTP/1.1 chunks are
        /// read into the connection's write buffer, up to its free size).
        public var streamBlockSize: Int
        /// A request's headers must arrive within this long of the connection opening or
        /// of its previous response ending (see `SlowClientGuard`).
        public var requestTimeoutSeconds: Int
        /// After the headers, each this many body bytes buy one more second.
        public var minBodyBytesPerSecond: Int

        public init(host: String, port: Int, threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                    maxBodyBytes: Int = 10 << 20, connectionMemoryLimit: Int = 4 * 1024,
                    connectionLimit: Int = 19_500, connectionTimeoutSeconds: Int = 60,
                    streamBlockSize: Int = 8 * 1024, requestTimeoutSeconds: Int = 30,
                    minBodyBytesPerSecond: Int = 500, maxHeadBytes: Int = 3 * 1024) {
            self.host = host
            self.port = port
            self.threads = max(1, threads)
            self.maxBodyBytes = maxBodyBytes
            self.connectionMemoryLimit = connectionMemoryLimit
            self.connectionLimit = connectionLimit
            self.connectionTimeoutSeconds = connectionTimeoutSeconds
            self.streamBlockSize = streamBlockSize
            self.requestTimeoutSeconds = requestTimeoutSeconds
            self.minBodyBytesPerSecond = minBodyBytesPerSecond
            self.maxHeadBytes = maxHeadBytes
        }
    }

    let options: Options
    let responder: any HTTPResponder
    let slowClients: SlowClientGuard
    /// The block size of a chunked stream's response: unused by libmicrohttpd, which wants it above 0.
    static let chunkedBlockSize = 64
    // `daemon`, `listenFD`, `stopping` and `suspended` are guarded by `lock`.
    private let lock = NSLock()
    private var daemon: OpaquePointer?
    private var listenFD: Int32 = -1
    private var stopping = false
    private var suspended: [ObjectIdentifier: any Resumable] = [:]
    private var selfRef: Unmanaged<HTTPServer>?
    /// The port actually bound (resolves port 0).
    public private(set) var boundPort: Int = 0

    public init(options: Options, responder: any HTTPResponder) {
        self.options = options
        self.responder = responder
        self.slowClients = SlowClientGuard(requestTimeoutSeconds: options.requestTimeoutSeconds,
                                           minBodyBytesPerSecond: options.minBodyBytesPerSecond)
    }

    /// Clients dropped for sending their request too slowly.
    public var droppedSlowClients: Int { slowClients.dropped }

    public func start() throws {
        var port: Int32 = 0
        let fd = kiln_listen(options.host, String(options.port), 4096, &port)
        guard fd >= 0 else {
            throw HTTPServerError(description: "cannot listen on \(options.host):\(options.port): \(String(cString: strerror(-fd)))")
        }
        let ref = Unmanaged.passRetained(self)
        let flags = MHD_USE_EPOLL_INTERNAL_THREAD.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue | MHD_USE_ERROR_LOG.rawValue
        let d = kiln_mhd_start(
            UInt32(flags), fd, UInt32(options.threads), options.connectionMemoryLimit,
            UInt32(options.connectionLimit), UInt32(options.connectionTimeoutSeconds),
            accessHandler, ref.toOpaque(), requestCompleted, ref.toOpaque(), connectionNotice, ref.toOpaque(),
            targetReceived, ref.toOpaque())
        guard let d else {
            ref.release()
            close(fd)
            throw HTTPServerError(description: "libmicrohttpd refused to start on \(options.host):\(options.port)")
        }
        lock.lock()
        daemon = d
        listenFD = fd
        selfRef = ref
        boundPort = Int(port)
        lock.unlock()
        slowClients.start()
    }

    /// Stops accepting, resumes every suspended connection (a suspended connection at
    /// MHD_stop_daemon leaks or crashes), then stops the daemon.
    public func stop() {
        lock.lock()
        guard let d = daemon else { lock.unlock(); return }
        stopping = true
        let pending = Array(suspended.values)
        suspended.removeAll()
        lock.unlock()
        slowClients.stop()
        _ = MHD_quiesce_daemon(d)
        for item in pending { item.resumeForShutdown(responder) }
        // Give resumed connections a moment to write their last bytes.
        usleep(100_000)
        MHD_stop_daemon(d)
        lock.lock()
        daemon = nil
        let fd = listenFD
        listenFD = -1
        let ref = selfRef
        selfRef = nil
        lock.unlock()
        if fd >= 0 { close(fd) }
        ref?.release()
    }

    /// Records a suspended connection; false when the server is stopping (do not suspend).
    func trackSuspended(_ item: any Resumable) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if stopping { return false }
        suspended[ObjectIdentifier(item)] = item
        return true
    }

    func untrackSuspended(_ item: any Resumable) {
        lock.lock()
        suspended[ObjectIdentifier(item)] = nil
        lock.unlock()
    }

    static func from(_ pointer: UnsafeMutableRawPointer?) -> HTTPServer {
        Unmanaged<HTTPServer>.fromOpaque(pointer!).takeUnretainedValue()
    }
}

/// A suspended connection the server can resume at shutdown.
protocol Resumable: AnyObject {
    func resumeForShutdown(_ responder: any HTTPResponder)
}

// MARK: - Per-request state

/// Lives from the request line (libmicrohttpd's URI callback) to MHD's completion notice.
final class RequestState: @unchecked Sendable, Resumable {
    // Set on the daemon thread that owns the connection; `lock` guards the
    // fields shared with the thread that resolves a deferred response.
    let connection: OpaquePointer
    /// The request target as it appeared in the request line (nil: there was none).
    let rawTarget: [UInt8]?
    /// Set by the first call of the access handler; until then `request` is a placeholder.
    var started = false
    var request = HTTPRequest(method: "", path: "/")
    var bodyBytes = 0
    var rejected = false
    var tooLarge = false
    var status = 0
    var route: String?
    let startNanos: UInt64
    let lock = NSLock()
    var readyResponse: HTTPResponse?
    var isSuspended = false
    var dispatched = false
    /// An HTTP/1.0 client gets a streamed body unchunked, through the response's own
    /// block buffer; HTTP/1.1 chunks are built in the connection's pool instead.
    var http10 = false

    init(connection: OpaquePointer, rawTarget: [UInt8]?) {
        self.connection = connection
        self.rawTarget = rawTarget
        self.startNanos = DispatchTime.now().uptimeNanoseconds
    }

    func resumeForShutdown(_ responder: any HTTPResponder) {
        lock.lock()
        if readyResponse == nil {
            readyResponse = HTTPServer.refusalAnswer(responder, request, .shuttingDown)
        }
        if isSuspended {
            isSuspended = false
            MHD_resume_connection(connection)
        }
        lock.unlock()
    }
}

extension HTTPServer {
    /// The responder's answer to a refused request, `Connection: close` added where the
    /// connection ends with it.
    static func refusalAnswer(_ responder: any HTTPResponder, _ request: HTTPRequest, _ refusal: HTTPRefusal) -> HTTPResponse {
        var refused = request
        refused.refusal = refusal
        var response: HTTPResponse
        switch responder.respond(to: refused) {
        case .now(let r): response = r
        case .later: response = HTTPResponse(status: 500, headers: [("Content-Type", "text/plain")], body: .bytes(Array("a refusal must be answered at once\n".utf8)))
        }
        if refusal.closes, response.header("Connection") == nil { response.headers.append(("Connection", "close")) }
        return response
    }

    fileprivate func refuse(_ refusal: HTTPRefusal, _ state: RequestState) -> MHD_Result {
        state.rejected = true
        return queue(HTTPServer.refusalAnswer(responder, state.request, refusal), on: state)
    }
}

private final class HeaderCollector {
    var headers: [String: String] = [:]
    /// Header lines as received, for the framing checks.
    var lines: [(name: String, value: String)] = []
    /// A header came from an obs-fold (see `kiln_mhd_header_is_unfolded`).
    var folded = false
}

private let collectHeader: MHD_KeyValueIterator = { cls, _, key, value in
    let box = Unmanaged<HeaderCollector>.fromOpaque(cls!).takeUnretainedValue()
    if let key {
        let raw = String(cString: key)
        let name = raw.lowercased()
        let v = value.map { String(cString: $0) } ?? ""
        box.lines.append((raw, v))
        if kiln_mhd_header_is_unfolded(key, value) == 0 { box.folded = true }
        if let existing = box.headers[name] {
            box.headers[name] = existing + ", " + v
        } else {
            box.headers[name] = v
        }
    }
    return MHD_Result.YES
}

private let collectQuery: MHD_KeyValueIterator = { cls, _, key, value in
    let box = Unmanaged<HeaderCollector>.fromOpaque(cls!).takeUnretainedValue()
    if let key {
        let name = String(cString: key)
        if box.headers[name] == nil {
            box.headers[name] = value.map { String(cString: $0) } ?? ""
        }
    }
    return MHD_Result.YES
}

private func collect(_ connection: OpaquePointer, kind: MHD_ValueKind, iterator: MHD_KeyValueIterator) -> HeaderCollector {
    let box = HeaderCollector()
    let ref = Unmanaged.passUnretained(box)
    _ = MHD_get_connection_values(connection, kind, iterator, ref.toOpaque())
    return box
}

private func makeRequestID() -> String {
    var rng = SystemRandomNumberGenerator()
    let a = rng.next() as UInt64
    return String(a, radix: 16).leftPadded(to: 16)
}

extension String {
    func leftPadded(to n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}

// MARK: - Callbacks (run on daemon threads; capture nothing)

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, version, uploadData, uploadDataSize, conCls in
    let server = HTTPServer.from(cls)
    guard let connection, let conCls, let uploadDataSize else { return MHD_Result.NO }

    if conCls.pointee == nil {
        // No URI callback for this request (libmicrohttpd always makes one): no target.
        conCls.pointee = Unmanaged.passRetained(RequestState(connection: connection, rawTarget: nil)).toOpaque()
    }
    let state = Unmanaged<RequestState>.fromOpaque(conCls.pointee!).takeUnretainedValue()
    if !state.started {
        state.started = true
        server.slowClients.headersReceived(connection)
        let headers = collect(connection, kind: MHD_ValueKind.HEADER_KIND, iterator: collectHeader)
        let methodText = method.map { String(cString: $0) } ?? "GET"
        let target = RequestTarget.parse(state.rawTarget ?? [], method: methodText)
        state.request = HTTPRequest(method: methodText, target: (try? target.get()) ?? .invalid,
                                    headers: headers.headers, requestID: makeRequestID())
        let request = state.request
        let versionText = version.map { String(cString: $0) } ?? ""
        state.http10 = versionText == "HTTP/1.0"
        if case .failure(let why) = target { return server.refuse(.badRequest(why.description), state) }
        // Refuse an ambiguous request before reading any of its body; answering now makes
        // libmicrohttpd close the connection after the answer, so nothing that follows the
        // head is taken for a next request.
        if let why = RequestFraming.problem(version: versionText, headers: headers.lines, folded: headers.folded) {
            return server.refuse(.badRequest(why), state)
        }
        // A head that leaves too little of the connection's pool for the answer.
        let headBytes = request.method.utf8.count + (state.rawTarget?.count ?? 0) + versionText.utf8.count
            + headers.lines.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        if headBytes > server.options.maxHeadBytes {
            return server.refuse(.headTooLarge(limit: server.options.maxHeadBytes), state)
        }
        // Refuse a declared oversize body before reading any of it. libmicrohttpd has
        // checked that it is a number below 2^64; one that does not fit an Int is too large.
        if let length = request.headers["content-length"], Int(length).map({ $0 > server.options.maxBodyBytes }) ?? true {
            return server.refuse(.bodyTooLarge(limit: server.options.maxBodyBytes), state)
        }
        return MHD_Result.YES
    }

    if uploadDataSize.pointee > 0 {
        let n = uploadDataSize.pointee
        uploadDataSize.pointee = 0
        server.slowClients.received(connection, bodyBytes: n)
        if state.rejected || state.tooLarge { return MHD_Result.YES }
        if state.bodyBytes + n > server.options.maxBodyBytes {
            // libmicrohttpd refuses a response while it delivers upload data, so the rest
            // of an undeclared (chunked) body is discarded as it arrives and the 413 goes
            // out at its end. A declared Content-Length is refused above, before any body.
            state.tooLarge = true
            state.request.body = []
            return MHD_Result.YES
        }
        if let uploadData {
            uploadData.withMemoryRebound(to: UInt8.self, capacity: n) { p in
                state.request.body.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
            }
        }
        state.bodyBytes += n
        return MHD_Result.YES
    }
    if state.rejected { return MHD_Result.YES }
    if state.tooLarge { return server.refuse(.bodyTooLarge(limit: server.options.maxBodyBytes), state) }

    // Final call: either after a resume (the response is ready) or the first dispatch.
    state.lock.lock()
    if let ready = state.readyResponse {
        state.readyResponse = nil
        state.lock.unlock()
        return server.queue(ready, on: state)
    }
    if state.dispatched {
        // Woken without a response (should not happen): keep waiting.
        state.lock.unlock()
        return MHD_Result.YES
    }
    state.dispatched = true
    state.lock.unlock()
    // The request is complete: whatever the answer waits for (a synchronous run, a log
    // stream), the slow-client deadline no longer applies.
    server.slowClients.answering(connection)

    switch server.responder.respond(to: state.request) {
    case .now(let response):
        return server.queue(response, on: state)
    case .later(let promise):
        state.lock.lock()
        if let immediate = promise.observe({ response in
            // Strong captures: a promise resolved after shutdown must find both alive.
            state.lock.lock()
            state.readyResponse = response
            let wasSuspended = state.isSuspended
            state.isSuspended = false
            if wasSuspended {
                server.untrackSuspended(state)
                MHD_resume_connection(state.connection)
            }
            state.lock.unlock()
        }) {
            state.lock.unlock()
            return server.queue(immediate, on: state)
        }
        if state.readyResponse == nil {
            if server.trackSuspended(state) {
                state.isSuspended = true
                MHD_suspend_connection(connection)
            } else {
                state.lock.unlock()
                return server.queue(HTTPServer.refusalAnswer(server.responder, state.request, .shuttingDown), on: state)
            }
        }
        state.lock.unlock()
        return MHD_Result.YES
    }
}

private let requestCompleted: MHD_RequestCompletedCallback = { cls, connection, conCls, _ in
    if let connection { HTTPServer.from(cls).slowClients.completed(connection) }
    guard let conCls, let raw = conCls.pointee else { return }
    let server = HTTPServer.from(cls)
    let state = Unmanaged<RequestState>.fromOpaque(raw).takeRetainedValue()
    conCls.pointee = nil
    // A request libmicrohttpd answered itself (a bad request line or header) never
    // reached Kiln: nothing to log.
    guard state.started else { return }
    let elapsed = DispatchTime.now().uptimeNanoseconds &- state.startNanos
    server.responder.completed(state.request, status: state.status, route: state.route, durationNanos: elapsed)
}

/// The request line's target, before libmicrohttpd splits and decodes it. What this
/// returns becomes the request's context pointer (`conCls`), released in `requestCompleted`.
private let targetReceived: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, OpaquePointer?) -> UnsafeMutableRawPointer? = { _, uri, connection in
    guard let connection else { return nil }
    let raw = uri.map { p in Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p))) }
    // Kiln reads the query from `raw`; libmicrohttpd's own split of it could exhaust the pool.
    if let uri { kiln_mhd_forget_query(uri) }
    return Unmanaged.passRetained(RequestState(connection: connection, rawTarget: raw)).toOpaque()
}

/// Connections opening and closing, for the slow-client deadlines.
private let connectionNotice: MHD_NotifyConnectionCallback = { cls, connection, _, code in
    guard let connection else { return }
    let server = HTTPServer.from(cls)
    if code == MHD_ConnectionNotificationCode.CONNECTION_NOTIFY_STARTED {
        server.slowClients.opened(connection)
    } else {
        server.slowClients.closed(connection)
    }
}

extension HTTPServer {
    fileprivate func queue(_ response: HTTPResponse, on state: RequestState) -> MHD_Result {
        slowClients.answering(state.connection)
        state.status = response.status
        state.route = response.route
        let mhdResponse: OpaquePointer?
        switch response.body {
        case .bytes(let bytes):
            mhdResponse = bytes.withUnsafeBytes { raw in
                MHD_create_response_from_buffer(raw.count, UnsafeMutableRawPointer(mutating: raw.baseAddress), MHD_ResponseMemoryMode.RESPMEM_MUST_COPY)
            }
        case .stream(let source):
            let box = StreamBox(source: source, connection: state.connection, server: self)
            let ref = Unmanaged.passRetained(box)
            // libmicrohttpd allocates (and zeroes) `block size` bytes with every callback
            // response, but fills HTTP/1.1 chunks straight into the connection's write
            // buffer: only an HTTP/1.0 stream uses that block. At 19,000 streams the
            // difference is 150 MiB.
            let block = state.http10 ? options.streamBlockSize : HTTPServer.chunkedBlockSize
            mhdResponse = MHD_create_response_from_callback(
                kiln_mhd_size_unknown(), block, streamReader, ref.toOpaque(), streamFree)
            if mhdResponse == nil {
                ref.release()
            } else {
                source.attach(waker: { [weak box] in box?.wake() })
            }
        }
        guard let mhdResponse else { return MHD_Result.NO }
        defer { MHD_destroy_response(mhdResponse) }
        var headers = response.headers
        headers.append(("X-Request-ID", state.request.requestID))
        for (name, value) in headers {
            _ = MHD_add_response_header(mhdResponse, name, value)
        }
        return MHD_queue_response(state.connection, UInt32(response.status), mhdResponse)
    }
}

// MARK: - Streaming bodies

final class StreamBox: @unchecked Sendable, Resumable {
    let source: any HTTPStreamSource
    let connection: OpaquePointer
    unowned let server: HTTPServer
    // Guarded by `lock`: the suspend flag and wake handshake. `leftover` is only
    // touched by the reader, which MHD calls one at a time per connection.
    private let lock = NSLock()
    private var suspended = false
    private var wakePending = false
    private var closed = false
    private var leftover: [UInt8] = []
    private var leftoverOffset = 0

    init(source: any HTTPStreamSource, connection: OpaquePointer, server: HTTPServer) {
        self.source = source
        self.connection = connection
        self.server = server
    }

    func wake() {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        if suspended {
            suspended = false
            server.untrackSuspended(self)
            MHD_resume_connection(connection)
        } else {
            wakePending = true
        }
    }

    func resumeForShutdown(_ responder: any HTTPResponder) {
        wake()
    }

    func finish() {
        lock.lock()
        closed = true
        lock.unlock()
        source.close()
    }

    /// Fills `buffer`; returns the byte count, 0 after suspending, or a sentinel.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        if leftoverOffset < leftover.count {
            let n = min(buffer.count, leftover.count - leftoverOffset)
            leftover.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + leftoverOffset, byteCount: n)
            }
            leftoverOffset += n
            if leftoverOffset == leftover.count { leftover = []; leftoverOffset = 0 }
            return n
        }
        while true {
            lock.lock()
            wakePending = false
            lock.unlock()
            switch source.read(max: buffer.count) {
            case .bytes(let bytes):
                let n = min(buffer.count, bytes.count)
                bytes.withUnsafeBytes { src in
                    buffer.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: n)
                }
                if n < bytes.count {
                    leftover = bytes
                    leftoverOffset = n
                }
                return n
            case .end:
                return Int(kiln_mhd_end_of_stream())
            case .wait:
                lock.lock()
                if wakePending {
                    lock.unlock()
                    continue
                }
                if !server.trackSuspended(self) {
                    lock.unlock()
                    return Int(kiln_mhd_end_with_error())
                }
                suspended = true
                MHD_suspend_connection(connection)
                lock.unlock()
                return 0
            }
        }
    }
}

private let streamReader: MHD_ContentReaderCallback = { cls, _, buf, max in
    let box = Unmanaged<StreamBox>.fromOpaque(cls!).takeUnretainedValue()
    guard let buf, max > 0 else { return 0 }
    return box.read(into: UnsafeMutableRawBufferPointer(start: buf, count: max))
}

private let streamFree: MHD_ContentReaderFreeCallback = { cls in
    let box = Unmanaged<StreamBox>.fromOpaque(cls!).takeRetainedValue()
    box.finish()
}
