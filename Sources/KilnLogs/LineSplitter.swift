import KilnCore

/// Cuts a byte stream into log lines: a line ends at LF; a CR just before the LF, or at
/// the very end of the output, is dropped; invalid UTF-8 becomes U+FFFD; a line longer
/// than `maxLineBytes` is split into several lines. Output that ends without LF still
/// ends with a line (`finish`).
public struct LineSplitter: Sendable {
    public static let defaultMaxLineBytes = 64 * 1024
    public let maxLineBytes: Int
    private var pending: [UInt8] = []

    public init(maxLineBytes: Int = LineSplitter.defaultMaxLineBytes) {
        self.maxLineBytes = max(4, maxLineBytes)
    }

    /// Feeds a chunk; calls `emit` for each complete line.
    public mutating func feed(_ chunk: some Collection<UInt8>, _ emit: (String) -> Void) {
        var start = chunk.startIndex
        var i = chunk.startIndex
        while i != chunk.endIndex {
            if chunk[i] == 0x0A {
                if pending.isEmpty {
                    var end = i
                    if end > start, chunk[chunk.index(end, offsetBy: -1)] == 0x0D { end = chunk.index(end, offsetBy: -1) }
                    emitPiece(chunk[start..<end], emit)
                } else {
                    pending.append(contentsOf: chunk[start..<i])
                    if pending.last == 0x0D { pending.removeLast() }
                    emitPiece(pending, emit)
                    pending.removeAll(keepingCapacity: true)
                }
                start = chunk.index(after: i)
            }
            i = chunk.index(after: i)
        }
        if start != chunk.endIndex {
            pending.append(contentsOf: chunk[start..<chunk.endIndex])
            // A line with no LF in sight: send what fits, cut at a character boundary.
            // A full-length line whose only extra byte is a CR waits: it may be the CR of CR LF.
            while pending.count > maxLineBytes && !(pending.count == maxLineBytes + 1 && pending.last == 0x0D) {
                var cut = maxLineBytes
                var back = 0
                while back < 3, cut > 0, pending[cut] & 0xC0 == 0x80 { cut -= 1; back += 1 }
                if back == 3 || cut == 0 { cut = maxLineBytes }
                emitPiece(pending[0..<cut], emit)
                pending.removeFirst(cut)
            }
        }
    }

    /// Ends the stream: whatever is left is the last line.
    public mutating func finish(_ emit: (String) -> Void) {
        guard !pending.isEmpty else { return }
        if pending.last == 0x0D { pending.removeLast() }
        emitPiece(pending, emit)
        pending.removeAll()
    }

    private func emitPiece(_ bytes: some Collection<UInt8>, _ emit: (String) -> Void) {
        let text = String(decoding: bytes, as: UTF8.self)
        if text.utf8.count <= maxLineBytes {
            emit(text)
            return
        }
        // Replacement characters made it longer than the limit: split at scalar boundaries.
        var piece = String.UnicodeScalarView()
        var size = 0
        for scalar in text.unicodeScalars {
            let n = String(scalar).utf8.count
            if size + n > maxLineBytes {
                emit(String(piece))
                piece = String.UnicodeScalarView()
                size = 0
            }
            piece.append(scalar)
            size += n
        }
        if !piece.isEmpty { emit(String(piece)) }
    }
}
