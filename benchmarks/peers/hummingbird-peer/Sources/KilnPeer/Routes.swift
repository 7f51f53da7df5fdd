import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import ServiceLifecycle

/// `POST /v1/workloads/async`: only these fields are read; others are ignored.
struct SubmitRequest: Decodable {
    var runtime: Runtime
    var code: String
}

/// Encodes like Kiln's record: absent values are `null`, times RFC 3339 in UTC.
struct RecordResponse: ResponseEncodable {
    var record: WorkloadRecord

    enum CodingKeys: String, CodingKey {
        case id, status, runtime, isolation, exitCode = "exit_code", error, logLines = "log_lines"
        case durationMs = "duration_ms", createdAt = "created_at", startedAt = "started_at", finishedAt = "finished_at"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(record.id, forKey: .id)
        try c.encode(record.status, forKey: .status)
        try c.encode(record.runtime, forKey: .runtime)
        try c.encode("process", forKey: .isolation)
        try c.encode(record.exitCode, forKey: .exitCode)
        try c.encode(record.error, forKey: .error)
        try c.encode(record.logLines, forKey: .logLines)
        try c.encode(record.durationMs, forKey: .durationMs)
        try c.encode(rfc3339(record.createdMs), forKey: .createdAt)
        try c.encode(record.startedMs.map(rfc3339), forKey: .startedAt)
        try c.encode(record.finishedMs.map(rfc3339), forKey: .finishedAt)
    }
}

struct Health: ResponseEncodable {
    var status = "ok"
    var server = "kiln-peer"
}

struct Stats: ResponseEncodable {
    var workloads: [String: Int]
    var sseSubscribers: Int

    enum CodingKeys: String, CodingKey {
        case workloads, sseSubscribers = "sse_subscribers"
    }
}

/// Milliseconds since the epoch as `2026-11-26T10:00:00.123Z`.
func rfc3339(_ ms: Int64) -> String {
    var t = time_t(ms / 1000)
    var tm = tm()
    gmtime_r(&t, &tm)
    return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                  Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), Int(ms % 1000))
}

/// The routes B1, B2 and the `/healthz` test use, with Kiln's semantics (spec section 4 for
/// the log stream).
struct PeerAPI: Sendable {
    let runner: Runner
    let hub: HeartbeatHub
    let subscribers: SubscriberCount
    /// Lines and about how many bytes are taken from the log per write. With SwiftNIO's
    /// write-buffer high watermark (64 KiB), after which a write waits, a stream holds at most
    /// about 128 KiB of unsent data.
    static let readLines = 512
    static let readBytes = 64 * 1024

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ in Health() }
        router.get("/v1/stats") { _, _ in
            Stats(workloads: runner.counts, sseSubscribers: subscribers.value)
        }
        router.post("/v1/workloads/async") { request, context -> EditedResponse<RecordResponse> in
            let submission: SubmitRequest
            do {
                submission = try await request.decode(as: SubmitRequest.self, context: context)
            } catch {
                throw HTTPError(.badRequest, message: "body must be JSON with runtime python or shell and code")
            }
            let rec = runner.submit(runtime: submission.runtime, code: submission.code)
            return EditedResponse(status: .accepted, response: RecordResponse(record: rec))
        }
        router.get("/v1/workloads/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let rec = runner.record(id) else { throw HTTPError(.notFound, message: "workload \(id) not found") }
            return RecordResponse(record: rec)
        }
        router.get("/v1/workloads/:id/logs") { request, context in
            try streamLogs(request, id: context.parameters.require("id"))
        }
    }

    enum Format { case text, json }

    func streamLogs(_ request: Request, id: String) throws -> Response {
        guard let log = runner.log(id) else { throw HTTPError(.notFound, message: "workload \(id) not found") }
        let query = request.uri.queryParameters
        let format: Format
        switch query["format"] {
        case nil, "text": format = .text
        case "json": format = .json
        default: throw HTTPError(.badRequest, message: "format must be text or json")
        }
        var resume: Int64?
        if let raw: String = request.headers[HTTPField.Name("Last-Event-ID")!] ?? query["last_event_id"].map({ String($0) }) {
            guard let n = Int64(raw.trimmingCharacters(in: .whitespaces)), n >= 0 else {
                throw HTTPError(.badRequest, message: "Last-Event-ID must be a whole number")
            }
            resume = n
        }
        var tail: Int64?
        if let raw = query["tail"] {
            guard let n = Int64(raw), n >= 0 else { throw HTTPError(.badRequest, message: "tail must be a whole number") }
            tail = n
        }
        let (first, last, ended) = log.bounds
        if ended, let resume, resume >= last {
            // Nothing left to send: a browser's EventSource stops reconnecting on 204.
            return Response(status: .noContent, headers: [.cacheControl: "no-cache"])
        }
        var after: Int64 = resume ?? tail.map { max(0, last - $0) } ?? 0
        // A new stream starts no earlier than what is still in memory.
        after = max(after, first - 1)
        let start = after
        let sub = Subscriber()
        let api = self
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: ResponseBody { writer in
                api.subscribers.add(1)
                api.hub.add(sub)
                defer {
                    api.hub.remove(sub)
                    log.removeWaiter(sub)
                    api.subscribers.add(-1)
                }
                try await withGracefulShutdownHandler {
                    try await api.pump(log, after: start, format: format, sub: sub, to: &writer)
                } onGracefulShutdown: {
                    // Shutdown ends every workload: the stream then sends its `end` and finishes.
                    api.runner.shutdown()
                }
                try await writer.finish(nil)
            }
        )
    }

    /// Writes lines from the cursor on, keep-alives while idle, then `end`. A write to a client
    /// that went away throws, which ends the stream.
    private func pump(_ log: WorkloadLog, after: Int64, format: Format, sub: Subscriber,
                      to writer: inout any ResponseBodyWriter) async throws {
        var cursor = after
        let allocator = ByteBufferAllocator()
        while true {
            switch log.read(after: cursor, max: PeerAPI.readLines, maxBytes: PeerAPI.readBytes, waiter: sub) {
            case .lines(let lines):
                // A buffer per write, sized for it: an idle stream keeps none.
                var size = 0
                for line in lines { size += line.text.utf8.count + 32 }
                var buffer = allocator.buffer(capacity: format == .text ? size : size * 2 + 64)
                for line in lines { SSE.event(line, format: format, into: &buffer) }
                cursor = lines[lines.count - 1].seq
                _ = sub.takeHeartbeat()
                try await writer.write(buffer)
            case .end(let info, let lastSeq):
                var buffer = allocator.buffer(capacity: 160)
                SSE.end(info, lastSeq: lastSeq, into: &buffer)
                try await writer.write(buffer)
                return
            case .lagged:
                // Fell behind the window: disconnect (the lines it missed are no longer in memory).
                return
            case .wait:
                if sub.isStopped { return }
                if sub.takeHeartbeat() {
                    try await writer.write(SSE.keepalive)
                    continue
                }
                await sub.wait()
            }
        }
    }
}

/// Server-Sent Events framing, the same bytes as Kiln's.
enum SSE {
    static let keepalive = ByteBuffer(string: ": keepalive\n\n")

    static func event(_ line: LogLine, format: PeerAPI.Format, into out: inout ByteBuffer) {
        out.writeStaticString("id: ")
        out.writeString(String(line.seq))
        out.writeStaticString("\ndata: ")
        switch format {
        case .text:
            // A CR inside a line becomes a further data field of the same event.
            var text = line.text
            if text.utf8.contains(0x0D) {
                text = text.split(separator: "\r", omittingEmptySubsequences: false).joined(separator: "\ndata: ")
            }
            out.writeString(text)
        case .json:
            out.writeStaticString("{\"seq\":")
            out.writeString(String(line.seq))
            out.writeStaticString(",\"stream\":")
            out.writeStaticString(line.stream == .stdout ? "\"stdout\"" : "\"stderr\"")
            out.writeStaticString(",\"ts\":\"")
            out.writeString(rfc3339(line.tsMs))
            out.writeStaticString("\",\"line\":")
            writeJSONString(line.text, into: &out)
            out.writeStaticString("}")
        }
        out.writeStaticString("\n\n")
    }

    static func end(_ info: EndInfo, lastSeq: Int64, into out: inout ByteBuffer) {
        out.writeStaticString("event: end\nid: ")
        out.writeString(String(lastSeq))
        out.writeStaticString("\ndata: {\"status\":\"")
        out.writeString(info.status.rawValue)
        out.writeStaticString("\",\"exit_code\":")
        out.writeString(info.exitCode.map { String($0) } ?? "null")
        out.writeStaticString(",\"error\":")
        if let e = info.error { writeJSONString(e, into: &out) } else { out.writeStaticString("null") }
        out.writeStaticString(",\"log_lines\":")
        out.writeString(String(info.logLines))
        out.writeStaticString("}\n\n")
    }

    static func writeJSONString(_ s: String, into out: inout ByteBuffer) {
        out.writeStaticString("\"")
        for u in s.unicodeScalars {
            switch u {
            case "\"": out.writeStaticString("\\\"")
            case "\\": out.writeStaticString("\\\\")
            case "\n": out.writeStaticString("\\n")
            case "\r": out.writeStaticString("\\r")
            case "\t": out.writeStaticString("\\t")
            default:
                if u.value < 0x20 {
                    out.writeString(String(format: "\\u%04x", u.value))
                } else {
                    out.writeString(String(u))
                }
            }
        }
        out.writeStaticString("\"")
    }
}
