import KilnCore
import KilnEngine
import KilnHTTP

extension KilnAPI {
    /// `GET /v1/workloads/{id}/logs`: Server-Sent Events (spec section 4).
    func streamLogs(_ req: HTTPRequest, id: String, caller: Caller) throws -> HTTPResponse {
        let record = try visibleRecord(id, caller)
        let format: LogStreamSource.Format
        switch req.query["format"] {
        case nil, "text": format = .text
        case "json": format = .json
        default: throw APIError.invalid("format", "format must be text or json")
        }
        var resumeAfter: Int64? = nil
        if let raw = req.header("last-event-id") ?? req.query["last_event_id"] {
            guard let n = Int64(raw.trimmingCharacters(in: .whitespaces)), n >= 0, n <= LogStreamSource.maxSeq else {
                throw APIError.invalid("last_event_id", "Last-Event-ID must be a whole number from 0 to \(LogStreamSource.maxSeq)")
            }
            resumeAfter = n
        }
        let tail: Int? = req.query["tail"] == nil ? nil : try Query.int(req, "tail", default: 0, range: 0...Int(LogStreamSource.maxSeq))

        // A live log, when there is one; it exists from submission until the end is stored.
        // In a cluster, one that runs on another node is mirrored here while it runs.
        engine.follow(record)
        let live = engine.broker.log(id)
        let lastSeq = live?.lastSeq ?? record.logLines
        if live == nil, record.status.isTerminal, let after = resumeAfter, after >= record.logLines {
            return HTTPResponse(status: 204, headers: [("Cache-Control", "no-cache")])
        }
        var after: Int64 = 0
        if let resumeAfter {
            after = resumeAfter
        } else if let tail {
            after = Swift.max(0, lastSeq - Int64(tail))
        }
        let source = LogStreamSource(reader: engine.broker.cursor(id, after: after), format: format,
                                     hub: heartbeats, counter: subscribers, tenant: record.tenant)
        return HTTPResponse(status: 200, headers: [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ], body: .stream(source))
    }
}
