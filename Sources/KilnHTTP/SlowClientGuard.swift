internal import CMicroHTTPD
import Foundation

/// Drops clients that send their request too slowly (slowloris). libmicrohttpd's own
/// timeout only closes a connection that is silent for the whole timeout, so a client
/// that sends one header byte now and then, or a body a byte at a time, would hold its
/// connection for ever; enough of them exhaust the connection limit and file descriptors.
///
/// A connection that waits for a request must have received the request's headers within
/// `requestTimeout` of being opened or of its previous response ending (an idle keep-alive
/// connection is closed then too), and its body at `minBodyBytesPerSecond` after that: each
/// such many bytes received add one second to the deadline. A connection whose request is
/// complete (being answered, suspended for a synchronous run, streaming logs) is never
/// touched. A late client's socket is shut down; libmicrohttpd then closes the connection.
/// No answer is sent: libmicrohttpd cannot queue one before the request is complete.
final class SlowClientGuard: @unchecked Sendable {
    private struct Entry {
        var fd: Int32
        /// When the connection opened or its previous response ended.
        var since: UInt64
        /// When the current request's headers were complete.
        var headersAt: UInt64?
        var bodyBytes = 0
        /// The request is complete (or the client was already dropped): no deadline.
        var exempt = false
    }

    let requestTimeoutNanos: UInt64
    let minBodyBytesPerSecond: Int
    // Guarded by `lock`. A connection is removed in libmicrohttpd's close notice, which
    // comes before its socket is closed, so a shut-down descriptor is never a reused one.
    private let lock = NSLock()
    private var entries: [OpaquePointer: Entry] = [:]
    private var timer: DispatchSourceTimer?
    private var droppedCount = 0

    init(requestTimeoutSeconds: Int, minBodyBytesPerSecond: Int) {
        self.requestTimeoutNanos = UInt64(max(1, requestTimeoutSeconds)) * 1_000_000_000
        self.minBodyBytesPerSecond = max(1, minBodyBytesPerSecond)
    }

    /// Clients dropped so far.
    var dropped: Int {
        lock.lock()
        defer { lock.unlock() }
        return droppedCount
    }

    func start() {
        let t = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kiln.http.slow-clients", qos: .utility))
        t.schedule(deadline: .now() + 1, repeating: 1, leeway: .milliseconds(200))
        t.setEventHandler { [weak self] in self?.sweep(now: DispatchTime.now().uptimeNanoseconds) }
        t.resume()
        lock.lock()
        timer = t
        lock.unlock()
    }

    func stop() {
        lock.lock()
        let t = timer
        timer = nil
        lock.unlock()
        t?.cancel()
    }

    func opened(_ connection: OpaquePointer) {
        let fd = kiln_mhd_connection_fd(connection)
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        entries[connection] = Entry(fd: fd, since: now, exempt: fd < 0)
        lock.unlock()
    }

    func closed(_ connection: OpaquePointer) {
        lock.lock()
        entries[connection] = nil
        lock.unlock()
    }

    /// The first call of the access handler for a request: its headers are in.
    func headersReceived(_ connection: OpaquePointer) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        if entries[connection]?.exempt == false {
            entries[connection]?.headersAt = now
            entries[connection]?.bodyBytes = 0
        }
        lock.unlock()
    }

    func received(_ connection: OpaquePointer, bodyBytes n: Int) {
        lock.lock()
        entries[connection]?.bodyBytes += n
        lock.unlock()
    }

    /// The request is complete, or answered early: it is being answered now.
    func answering(_ connection: OpaquePointer) {
        lock.lock()
        entries[connection]?.exempt = true
        lock.unlock()
    }

    /// The response ended; the connection may wait for the next request.
    func completed(_ connection: OpaquePointer) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        if var e = entries[connection], e.fd >= 0 {
            e.since = now
            e.headersAt = nil
            e.bodyBytes = 0
            e.exempt = false
            entries[connection] = e
        }
        lock.unlock()
    }

    func sweep(now: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        for (connection, e) in entries where !e.exempt {
            let deadline: UInt64
            if let headersAt = e.headersAt {
                deadline = headersAt &+ requestTimeoutNanos &+ UInt64(e.bodyBytes / minBodyBytesPerSecond) * 1_000_000_000
            } else {
                deadline = e.since &+ requestTimeoutNanos
            }
            guard now > deadline else { continue }
            entries[connection]?.exempt = true
            droppedCount += 1
            _ = shutdown(e.fd, Int32(SHUT_RDWR))
        }
    }
}
