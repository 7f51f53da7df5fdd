import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KilnCore
import KilnLogs

/// A server error or an unreachable server, shown as one line.
struct ClientError: Error, CustomStringConvertible {
    var description: String
    /// The server could not be reached (no answer at all), as against an answer that is an error.
    var unreachable = false
}

/// Kiln's HTTP API over URLSession (FoundationNetworking on Linux): no extra package to
/// build, and its data delegate streams the SSE log as it arrives.
final class KilnClient: Sendable {
    let base: URL
    let token: String?
    let session: URLSession

    init(server: String, token: String?) throws {
        guard let url = URL(string: server.hasSuffix("/") ? String(server.dropLast()) : server),
              url.scheme == "http" || url.scheme == "https" else {
            throw ClientError(description: "invalid server address \(server) (expected http://host:port)")
        }
        base = url
        self.token = token?.isEmpty == true ? nil : token
        let config = URLSessionConfiguration.ephemeral
        config.timeoutIntervalForRequest = 3600
        session = URLSession(configuration: config)
    }

    func makeRequest(_ method: String, _ path: String, body: JSON? = nil, headers: [String: String] = [:]) -> URLRequest {
        var r = URLRequest(url: URL(string: base.absoluteString + path)!)
        r.httpMethod = method
        if let token { r.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        for (k, v) in headers { r.setValue(v, forHTTPHeaderField: k) }
        if let body {
            r.httpBody = Data(body.encoded())
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        return r
    }

    /// Sends a request and returns status and body; throws on a transport failure.
    func send(_ method: String, _ path: String, body: JSON? = nil) throws -> (Int, [UInt8]) {
        let request = makeRequest(method, path, body: body)
        let box = ReplyBox()
        let task = session.dataTask(with: request) { data, response, error in
            box.set(status: (response as? HTTPURLResponse)?.statusCode ?? 0, data: data.map { Array($0) } ?? [], error: error)
        }
        task.resume()
        let (status, data, error) = box.wait()
        if let error {
            throw ClientError(description: "cannot reach \(base.absoluteString): \(error.localizedDescription)", unreachable: true)
        }
        return (status, data)
    }

    /// Sends a request and parses a JSON answer; a non-2xx answer becomes a ClientError.
    func json(_ method: String, _ path: String, body: JSON? = nil) throws -> JSON {
        let (status, data) = try send(method, path, body: body)
        let value = try? JSON.parse(data)
        guard (200..<300).contains(status) else { throw ClientError(description: Self.describe(status: status, value, data)) }
        guard let value else { throw ClientError(description: "the server answered \(status) with something that is not JSON") }
        return value
    }

    static func describe(status: Int, _ value: JSON?, _ data: [UInt8]) -> String {
        if let e = value?["error"], let message = e["message"]?.stringValue {
            return "\(status) \(e["code"]?.stringValue ?? "error"): \(message)"
        }
        return "the server answered \(status): \(String(decoding: data.prefix(200), as: UTF8.self))"
    }

    // MARK: Following a log

    enum StreamEvent {
        case line(LogLine)
        case end(EndInfo, lastSeq: Int64)
    }

    /// Follows a workload's log from after `after` (nil: from the start, or the last `tail`
    /// lines). On a dropped connection it reconnects with Last-Event-ID, so no line is lost
    /// or repeated. Returns the end of the workload.
    func follow(_ id: String, after: Int64?, tail: Int?, onLine: @escaping (LogLine) -> Void) throws -> EndInfo {
        // One plain request first: an unreachable server or an unknown id fails within about
        // a second, not after the stream's 30 reconnects (41 s against a server that was not
        // there). A connection that fails is tried three times more, quickly, since a proxy
        // or the server may be restarting for a moment.
        for attempt in 0... {
            do {
                _ = try record(id)
                break
            } catch let e as ClientError where e.unreachable && attempt < 3 {
                Thread.sleep(forTimeInterval: 0.3)
            }
        }
        var lastSeq = after
        var attempt = 0
        while true {
            var query = "format=json"
            if lastSeq == nil, let tail { query += "&tail=\(tail)" }
            var headers: [String: String] = ["Accept": "text/event-stream"]
            if let lastSeq { headers["Last-Event-ID"] = String(lastSeq) }
            let stream = SSEStream(request: makeRequest("GET", Self.workloadPath(id) + "/logs?\(query)", headers: headers))
            let outcome = stream.run { event in
                switch event {
                case .line(let l):
                    lastSeq = l.seq
                    onLine(l)
                case .end:
                    break
                }
            }
            switch outcome {
            case .ended(let info):
                return info
            case .noContent:
                // Nothing after our last line: the workload is finished.
                return EndInfo(record: try record(id))
            case .httpError(let status, let data):
                throw ClientError(description: Self.describe(status: status, try? JSON.parse(data), data))
            case .dropped(let why):
                attempt += 1
                if attempt > 30 { throw ClientError(description: "the log stream keeps dropping: \(why)") }
                Thread.sleep(forTimeInterval: min(2, 0.1 * Double(attempt)))
            }
            if case .dropped = outcome {} else { attempt = 0 }
        }
    }

    func record(_ id: String) throws -> WorkloadRecord {
        try WorkloadRecord(json: try json("GET", Self.workloadPath(id)))
    }

    /// A workload's path with its id as one encoded segment: `kiln logs ../../healthz` asked
    /// for `/healthz` when the id went into the path as it was.
    static func workloadPath(_ id: String) -> String {
        "/v1/workloads/" + (id.addingPercentEncoding(withAllowedCharacters: unreserved) ?? "")
    }

    /// RFC 3986's unreserved characters: everything else in an id is percent-encoded.
    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
}

/// One SSE connection, read through a URLSession data delegate.
final class SSEStream: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    enum Outcome {
        case ended(EndInfo)
        case noContent
        case httpError(Int, [UInt8])
        case dropped(String)
    }

    let request: URLRequest
    // Touched by the delegate queue (one operation at a time) and read after `done` fires.
    private var buffer: [UInt8] = []
    private var status = 0
    private var errorBody: [UInt8] = []
    private var outcome: Outcome?
    private var handler: ((KilnClient.StreamEvent) -> Void)?
    private let done = DispatchSemaphore(value: 0)
    private var event = (id: Int64?.none, name: "message", data: [String]())

    init(request: URLRequest) {
        self.request = request
    }

    func run(_ handler: @escaping (KilnClient.StreamEvent) -> Void) -> Outcome {
        self.handler = handler
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        let config = URLSessionConfiguration.ephemeral
        config.timeoutIntervalForRequest = 120
        let session = URLSession(configuration: config, delegate: self, delegateQueue: queue)
        session.dataTask(with: request).resume()
        done.wait()
        session.invalidateAndCancel()
        return outcome ?? .dropped("no answer")
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        status = (response as? HTTPURLResponse)?.statusCode ?? 0
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        guard outcome == nil else { return }
        if status != 200 {
            errorBody += data
            return
        }
        buffer += data
        parse()
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
        if outcome == nil {
            if status == 204 { outcome = .noContent }
            else if status != 0 && status != 200 { outcome = .httpError(status, errorBody) }
            else { outcome = .dropped(error?.localizedDescription ?? "the connection closed before the end event") }
        }
        done.signal()
    }

    /// Consumes complete lines of the SSE text in `buffer`.
    private func parse() {
        var start = 0
        while let nl = buffer[start...].firstIndex(of: 0x0A) {
            var line = buffer[start..<nl]
            if line.last == 0x0D { line = line.dropLast() }
            start = nl + 1
            handleLine(String(decoding: line, as: UTF8.self))
            if outcome != nil { break }
        }
        buffer.removeFirst(start)
    }

    private func handleLine(_ line: String) {
        if line.isEmpty {
            dispatchEvent()
            return
        }
        if line.hasPrefix(":") { return }
        let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let field = String(parts[0])
        var value = parts.count > 1 ? String(parts[1]) : ""
        if value.hasPrefix(" ") { value.removeFirst() }
        switch field {
        case "id": event.id = Int64(value)
        case "event": event.name = value
        case "data": event.data.append(value)
        default: break
        }
    }

    private func dispatchEvent() {
        defer { event = (nil, "message", []) }
        guard !event.data.isEmpty, let json = try? JSON.parse(event.data.joined(separator: "\n")) else { return }
        if event.name == "end" {
            let info = EndInfo(json: json)
            handler?(.end(info, lastSeq: event.id ?? 0))
            outcome = .ended(info)
            return
        }
        if let l = LogLine(json: json) { handler?(.line(l)) }
    }
}

private final class ReplyBox: Sendable {
    // Set once by URLSession's completion, before the signal; read after the wait.
    private let value = Locked<(Int, [UInt8], (any Error)?)>((0, [], nil))
    private let semaphore = DispatchSemaphore(value: 0)
    func set(status: Int, data: [UInt8], error: (any Error)?) {
        value.withLock { $0 = (status, data, error) }
        semaphore.signal()
    }
    func wait() -> (Int, [UInt8], (any Error)?) {
        semaphore.wait()
        return value.withLock { $0 }
    }
}

extension EndInfo {
    /// The exit code a CLI reports for this workload.
    var cliExitCode: Int32 {
        if let exitCode { return Int32(truncatingIfNeeded: exitCode) }
        return status == .completed ? 0 : 1
    }
}

