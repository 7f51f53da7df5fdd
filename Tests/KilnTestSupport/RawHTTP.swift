import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One HTTP exchange over a raw loopback socket: the request bytes go out exactly as
/// given (curl would refuse or repair a malformed request), and the answer is read as
/// sent, including whether the server closes the connection afterwards.
public enum RawHTTP {
    public struct Reply: Sendable {
        /// nil when no complete status line came.
        public var status: Int?
        public var headers: [(String, String)]
        public var body: [UInt8]
        /// The server closed the connection (after the answer, or instead of one).
        public var closed: Bool
        /// Bytes after the first answer: a second response means the rest of the request
        /// was taken for another one.
        public var extra: [UInt8]

        public func header(_ name: String) -> String? {
            headers.last { $0.0.lowercased() == name.lowercased() }?.1
        }

        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// A blocking TCP socket connected to 127.0.0.1:`port`; the caller closes it.
    public static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw TestFailure("connect to port \(port): errno \(e)")
        }
        return fd
    }

    /// Sends `request` to 127.0.0.1:`port`, reads one answer and then, for up to
    /// `closeWait` seconds, whether the server closes the connection.
    public static func exchange(port: Int, _ request: [UInt8], timeout: Double = 5, closeWait: Double = 1) throws -> Reply {
        let fd = try connect(port: port)
        defer { close(fd) }
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the server may answer early and close
            sent += n
        }
        var buffer: [UInt8] = []
        var closed = false
        let deadline = Date().addingTimeInterval(timeout)
        func fill(until: Date) -> Bool {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(max(0, until.timeIntervalSinceNow) * 1000)
            guard poll(&pfd, 1, ms) > 0 else { return false }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { closed = true; return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
        // The head.
        var headEnd: Int?
        while headEnd == nil {
            if let r = find(buffer, [13, 10, 13, 10]) { headEnd = r; break }
            if !fill(until: deadline) { break }
        }
        guard let headEnd else {
            return Reply(status: nil, headers: [], body: buffer, closed: closed, extra: [])
        }
        let lines = String(decoding: buffer[0..<headEnd], as: UTF8.self).components(separatedBy: "\r\n")
        let status = lines.first.flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) }
        let headers = lines.dropFirst().compactMap { line -> (String, String)? in
            guard let c = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<c]), line[line.index(after: c)...].trimmingCharacters(in: .whitespaces))
        }
        let bodyStart = headEnd + 4
        let length = headers.last { $0.0.lowercased() == "content-length" }.flatMap { Int($0.1) } ?? 0
        while buffer.count < bodyStart + length, fill(until: deadline) {}
        let bodyEnd = min(buffer.count, bodyStart + length)
        // Whether the server closes.
        let closeDeadline = Date().addingTimeInterval(closeWait)
        while !closed, fill(until: closeDeadline) {}
        return Reply(status: status, headers: headers, body: Array(buffer[bodyStart..<bodyEnd]), closed: closed,
                     extra: Array(buffer[bodyEnd...]))
    }

    public static func exchange(port: Int, _ request: String, timeout: Double = 5, closeWait: Double = 1) throws -> Reply {
        try exchange(port: port, Array(request.utf8), timeout: timeout, closeWait: closeWait)
    }

    static func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if Array(haystack[i..<i + needle.count]) == needle { return i }
        }
        return nil
    }
}
