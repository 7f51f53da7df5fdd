/// stdout as the record's `output`.
public enum OutputCapture {
    public static let limit = 1 << 20

    /// JSON text of the output: the parsed value when the trimmed text is valid JSON,
    /// else the text as a string, `null` when empty.
    public static func value(of bytes: [UInt8], truncated: Bool) -> (String, Bool) {
        if bytes.isEmpty { return ("null", truncated) }
        if !truncated {
            let trimmed = trim(bytes)
            if !trimmed.isEmpty, (try? JSON.parse(Array(trimmed))) != nil {
                return (String(decoding: trimmed, as: UTF8.self), false)
            }
        }
        return (JSON.string(String(decoding: bytes, as: UTF8.self)).text, truncated)
    }

    private static func trim(_ b: [UInt8]) -> ArraySlice<UInt8> {
        let ws: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
        var s = b.startIndex
        var e = b.endIndex
        while s < e, ws.contains(b[s]) { s += 1 }
        while e > s, ws.contains(b[e - 1]) { e -= 1 }
        return b[s..<e]
    }
}
