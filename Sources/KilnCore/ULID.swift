import Foundation

/// Monotonic ULIDs: 48-bit milliseconds then 80 random bits, Crockford base32.
/// Within one millisecond the random part increments, so ids sort in creation order.
public final class ULIDGenerator: Sendable {
    private static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    private struct Last {
        var millis: UInt64 = 0
        var high: UInt16 = 0
        var low: UInt64 = 0
    }
    private let last = Locked(Last())

    public init() {}

    public func next(now: Date = Date()) -> String {
        let wanted = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        let (millis, high, low) = last.withLock { last -> (UInt64, UInt16, UInt64) in
            if wanted <= last.millis {
                last.low &+= 1
                if last.low == 0 { last.high &+= 1 }
            } else {
                var rng = SystemRandomNumberGenerator()
                last = Last(millis: wanted, high: UInt16.random(in: 0...UInt16.max, using: &rng), low: rng.next())
            }
            return (last.millis, last.high, last.low)
        }
        return ULIDGenerator.encode(millis: millis, high: high, low: low)
    }

    static func encode(millis: UInt64, high: UInt16, low: UInt64) -> String {
        var out = [UInt8](repeating: 0, count: 26)
        var t = millis
        for i in stride(from: 9, through: 0, by: -1) {
            out[i] = alphabet[Int(t & 31)]
            t >>= 5
        }
        // 80 random bits = high 16 + low 64, as 16 base32 digits.
        var lo = low
        var hi = UInt64(high)
        for i in stride(from: 25, through: 10, by: -1) {
            out[i] = alphabet[Int(lo & 31)]
            lo = (lo >> 5) | ((hi & 31) << 59)
            hi >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// True for 26 characters of Crockford base32 (the shape of an id, not proof it exists).
    public static func isValid(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard u.count == 26 else { return false }
        return u.allSatisfy { alphabet.contains($0) } && u[0] <= UInt8(ascii: "7")
    }
}
