import Foundation
import NIOCore
import NIOPosix

struct HTTPResult: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func json() -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]
    }
}

/// Reads whole responses for `SimpleConnection`, one request in flight at a time.
final class SimpleResponseHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private var parser = ResponseParser()
    private var status = 0
    private var headers: [(String, String)] = []
    private var body: [UInt8] = []
    // Set and completed on the channel's event loop only.
    var promise: EventLoopPromise<HTTPResult>?

    func start(_ p: EventLoopPromise<HTTPResult>, head: Bool) {
        parser.reset()
        parser.noBody = head
        body.removeAll(keepingCapacity: true)
        promise = p
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        do {
            try buf.withUnsafeReadableBytes { raw in
                _ = try parser.feed(raw) { ev in self.handle(ev) }
            }
        } catch {
            fail(error)
            context.close(promise: nil)
        }
        buf.moveReaderIndex(to: buf.writerIndex)
    }

    private func handle(_ ev: ResponseParser.Event) {
        switch ev {
        case .head(let s, let h):
            status = s
            headers = h
        case .body(let b):
            body.append(contentsOf: b)
        case .end:
            let r = HTTPResult(status: status, headers: headers, body: body)
            let p = promise
            promise = nil
            p?.succeed(r)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        parser.connectionClosed { ev in self.handle(ev) }
        fail(WireError("connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(error)
        context.close(promise: nil)
    }

    private func fail(_ e: Error) {
        let p = promise
        promise = nil
        p?.fail(e)
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection (SwiftNIO underneath). Used by
/// the orchestrator's threads for submissions, polls, health probes and B3's POSTs.
final class SimpleConnection: @unchecked Sendable {
    let channel: Channel
    let handler: SimpleResponseHandler
    let host: String
    let port: Int

    static func connect(group: EventLoopGroup, host: String, port: Int, timeoutMs: Int64 = 10_000) throws -> SimpleConnection {
        let handler = SimpleResponseHandler()
        let ch = try ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.milliseconds(timeoutMs))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) }
            }
            .connect(host: host, port: port).wait()
        return SimpleConnection(channel: ch, handler: handler, host: host, port: port)
    }

    private init(channel: Channel, handler: SimpleResponseHandler, host: String, port: Int) {
        self.channel = channel
        self.handler = handler
        self.host = host
        self.port = port
    }

    func request(_ method: String, _ path: String, body: [UInt8]? = nil, timeoutMs: Int64 = 120_000) throws -> HTTPResult {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUser-Agent: kiln-bench\r\n"
        if let body {
            head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        var raw = Array(head.utf8)
        if let body { raw += body }
        let bytes = raw
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: HTTPResult.self)
        let handler = self.handler
        let channel = self.channel
        let isHead = method == "HEAD"
        loop.execute {
            handler.start(promise, head: isHead)
            var buf = channel.allocator.buffer(capacity: bytes.count)
            buf.writeBytes(bytes)
            channel.writeAndFlush(buf).whenFailure { promise.fail($0) }
        }
        let timeout = loop.scheduleTask(in: .milliseconds(timeoutMs)) {
            promise.fail(WireError("timeout after \(timeoutMs) ms: \(method) \(path)"))
        }
        defer { timeout.cancel() }
        return try promise.futureResult.wait()
    }

    func close() {
        try? channel.close().wait()
    }
}

/// A SimpleConnection that reconnects once when the server closed an idle connection.
final class SimpleClient: @unchecked Sendable {
    let group: EventLoopGroup
    let host: String
    let port: Int
    private var conn: SimpleConnection?
    private var lastUse: UInt64 = 0

    init(group: EventLoopGroup, host: String = "127.0.0.1", port: Int) {
        self.group = group
        self.host = host
        self.port = port
    }

    func request(_ method: String, _ path: String, body: [UInt8]? = nil, timeoutMs: Int64 = 120_000) throws -> HTTPResult {
        // The server closes connections idle for 60 s: start a new one well before that.
        if conn != nil && monoNs() - lastUse > 20_000_000_000 { conn?.close(); conn = nil }
        // Only a GET is retried (a POST might have been taken already).
        let attempts = method == "GET" ? 2 : 1
        for attempt in 0..<attempts {
            do {
                if conn == nil || !(conn!.channel.isActive) {
                    conn = try SimpleConnection.connect(group: group, host: host, port: port)
                }
                defer { lastUse = monoNs() }
                return try conn!.request(method, path, body: body, timeoutMs: timeoutMs)
            } catch {
                conn?.close()
                conn = nil
                if attempt == attempts - 1 { throw error }
            }
        }
        throw WireError("unreachable")
    }

    func getJSON(_ path: String) throws -> [String: Any] {
        let r = try request("GET", path)
        guard r.status == 200, let j = r.json() else { throw WireError("GET \(path): \(r.status) \(r.text.prefix(300))") }
        return j
    }

    func postJSON(_ path: String, _ obj: [String: Any]) throws -> HTTPResult {
        let data = try JSONSerialization.data(withJSONObject: obj)
        return try request("POST", path, body: Array(data))
    }

    func close() {
        conn?.close()
        conn = nil
    }
}
