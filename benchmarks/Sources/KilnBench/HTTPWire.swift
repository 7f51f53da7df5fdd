import Foundation

/// Incremental HTTP/1.1 response parser over raw bytes: status line and headers, then the
/// body by `Content-Length`, `Transfer-Encoding: chunked` or until the connection closes.
/// It is deliberately small and allocation-free on the body path (SSE at a million events
/// a second goes through it): body bytes are handed out as slices of the input buffer.
struct ResponseParser {
    enum Event {
        case head(status: Int, headers: [(String, String)])
        case body(UnsafeRawBufferPointer)
        case end
    }

    private enum State {
        case head
        case chunkSize
        case chunkData(Int)
        case chunkDataEnd   // the CRLF after a chunk's data
        case trailer
        case body(Int)
        case untilClose
        case done
    }

    private var state: State = .head
    private var lineBuf: [UInt8] = []
    private var status = 0
    private var headers: [(String, String)] = []
    private var sawStatusLine = false
    /// The request was HEAD or the status has no body (204, 304).
    var noBody = false

    var isDone: Bool { if case .done = state { return true } else { return false } }
    var isUntilClose: Bool { if case .untilClose = state { return true } else { return false } }
    /// Inside a chunk's data: the response stopped here would be cut in the middle of a chunk.
    var isInChunkData: Bool { if case .chunkData = state { return true } else { return false } }

    /// Ready for the next response on a keep-alive connection.
    mutating func reset() {
        state = .head
        lineBuf.removeAll(keepingCapacity: true)
        status = 0
        headers = []
        sawStatusLine = false
        noBody = false
    }

    /// Feeds bytes; calls `emit` for each event. Returns the number of bytes consumed
    /// (less than the input only when a response ended and more bytes follow).
    @discardableResult
    mutating func feed(_ input: UnsafeRawBufferPointer, _ emit: (Event) throws -> Void) throws -> Int {
        var i = 0
        let n = input.count
        while i < n {
            switch state {
            case .done:
                return i
            case .head, .chunkSize, .chunkDataEnd, .trailer:
                // Line-oriented states: gather one line.
                guard let line = takeLine(input, &i) else { return n }
                try handleLine(line, emit)
            case .chunkData(let remaining):
                let take = min(remaining, n - i)
                try emit(.body(UnsafeRawBufferPointer(rebasing: input[i..<(i + take)])))
                i += take
                state = remaining - take == 0 ? .chunkDataEnd : .chunkData(remaining - take)
            case .body(let remaining):
                let take = min(remaining, n - i)
                try emit(.body(UnsafeRawBufferPointer(rebasing: input[i..<(i + take)])))
                i += take
                if remaining - take == 0 {
                    state = .done
                    try emit(.end)
                } else {
                    state = .body(remaining - take)
                }
            case .untilClose:
                try emit(.body(UnsafeRawBufferPointer(rebasing: input[i..<n])))
                i = n
            }
        }
        return i
    }

    /// The connection closed: a body read until close ends here.
    mutating func connectionClosed(_ emit: (Event) throws -> Void) rethrows {
        if case .untilClose = state {
            state = .done
            try emit(.end)
        }
    }

    /// One line (without CR LF) when complete, else the partial line is kept.
    private mutating func takeLine(_ input: UnsafeRawBufferPointer, _ i: inout Int) -> [UInt8]? {
        let n = input.count
        var j = i
        while j < n && input[j] != 0x0A { j += 1 }
        if j == n {
            lineBuf.append(contentsOf: input[i..<n])
            i = n
            if lineBuf.count > 64 * 1024 { lineBuf.removeAll() }  // garbage; keep bounded
            return nil
        }
        lineBuf.append(contentsOf: input[i..<j])
        i = j + 1
        var line = lineBuf
        lineBuf.removeAll(keepingCapacity: true)
        if line.last == 0x0D { line.removeLast() }
        return line
    }

    private mutating func handleLine(_ line: [UInt8], _ emit: (Event) throws -> Void) throws {
        switch state {
        case .head:
            if !sawStatusLine {
                if line.isEmpty { return }  // tolerate a stray CRLF between responses
                sawStatusLine = true
                // "HTTP/1.1 200 OK"
                let parts = line.split(separator: 0x20, maxSplits: 2)
                guard parts.count >= 2, let s = Int(String(decoding: parts[1], as: UTF8.self)) else {
                    throw WireError("bad status line: \(String(decoding: line, as: UTF8.self))")
                }
                status = s
                return
            }
            if !line.isEmpty {
                if let colon = line.firstIndex(of: 0x3A) {
                    let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
                    let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespaces)
                    headers.append((name, value))
                }
                return
            }
            // End of the head.
            try emit(.head(status: status, headers: headers))
            let te = headers.first { $0.0 == "transfer-encoding" }?.1.lowercased()
            let cl = headers.first { $0.0 == "content-length" }.flatMap { Int($0.1) }
            if noBody || status == 204 || status == 304 || (100..<200).contains(status) {
                state = .done
                try emit(.end)
            } else if let te, te.contains("chunked") {
                state = .chunkSize
            } else if let cl {
                if cl == 0 {
                    state = .done
                    try emit(.end)
                } else {
                    state = .body(cl)
                }
            } else {
                state = .untilClose
            }
        case .chunkSize:
            var size = 0
            for b in line {
                let v: Int
                switch b {
                case 0x30...0x39: v = Int(b - 0x30)
                case 0x61...0x66: v = Int(b - 0x61 + 10)
                case 0x41...0x46: v = Int(b - 0x41 + 10)
                default: v = -1
                }
                if v < 0 { break }  // chunk extension or whitespace
                size = size * 16 + v
            }
            state = size == 0 ? .trailer : .chunkData(size)
        case .chunkDataEnd:
            state = .chunkSize
        case .trailer:
            if line.isEmpty {
                state = .done
                try emit(.end)
            }
        default:
            break
        }
    }
}

struct WireError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Splits a byte stream into LF-terminated lines (CR before LF stripped). Lines are handed
/// out as slices of the input when they lie inside one buffer, else from a carry buffer.
struct LineSplitter {
    private var carry: [UInt8] = []

    mutating func feed(_ input: UnsafeRawBufferPointer, _ onLine: (UnsafeRawBufferPointer) -> Void) {
        guard let base = input.baseAddress, input.count > 0 else { return }
        var start = 0
        let n = input.count
        while start < n {
            guard let p = memchr(base + start, 0x0A, n - start) else {
                carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[start..<n]))
                return
            }
            let end = base.distance(to: UnsafeRawPointer(p))
            if carry.isEmpty {
                var e = end
                if e > start && input[e - 1] == 0x0D { e -= 1 }
                onLine(UnsafeRawBufferPointer(rebasing: input[start..<e]))
            } else {
                carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[start..<end]))
                if carry.last == 0x0D { carry.removeLast() }
                carry.withUnsafeBytes { onLine($0) }
                carry.removeAll(keepingCapacity: true)
            }
            start = end + 1
        }
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func hasPrefix(_ p: StaticString) -> Bool {
        let len = p.utf8CodeUnitCount
        guard count >= len, let b = baseAddress else { return false }
        return memcmp(b, p.utf8Start, len) == 0
    }

    /// Parses a decimal number starting at `i`, advancing `i` past it; -1 when none.
    @inline(__always)
    func parseInt(_ i: inout Int) -> Int64 {
        var v: Int64 = 0
        var any = false
        while i < count {
            let c = self[i]
            if c < 0x30 || c > 0x39 { break }
            v = v &* 10 &+ Int64(c &- 0x30)
            any = true
            i += 1
        }
        return any ? v : -1
    }
}
