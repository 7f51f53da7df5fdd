import Foundation

/// Milliseconds since the epoch, and their RFC 3339 UTC form with milliseconds.
public enum Millis {
    public static func now() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    public static func rfc3339(_ ms: Int64) -> String {
        var t = time_t(ms / 1000)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let frac = Int(ms % 1000)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return s.count >= n ? s : String(repeating: "0", count: n - s.count) + s
        }
        return "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2)).\(pad(Int32(frac), 3))Z"
    }

    /// `rfc3339(_:)` read back: `YYYY-MM-DDTHH:MM:SS.mmmZ` (the fraction optional).
    public static func parse(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        func num(_ from: Int, _ n: Int) -> Int? {
            guard from + n <= b.count else { return nil }
            var v = 0
            for c in b[from..<from + n] {
                guard c >= 0x30, c <= 0x39 else { return nil }
                v = v * 10 + Int(c - 0x30)
            }
            return v
        }
        guard b.count >= 20, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54, b[13] == 0x3A, b[16] == 0x3A, b.last == 0x5A,
              let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2), let mi = num(14, 2),
              let sec = num(17, 2) else { return nil }
        var ms = 0
        if b.count == 24 {
            guard b[19] == 0x2E, let f = num(20, 3) else { return nil }
            ms = f
        } else if b.count != 20 {
            return nil
        }
        var tmv = tm()
        tmv.tm_year = Int32(y - 1900)
        tmv.tm_mon = Int32(mo - 1)
        tmv.tm_mday = Int32(d)
        tmv.tm_hour = Int32(h)
        tmv.tm_min = Int32(mi)
        tmv.tm_sec = Int32(sec)
        let t = timegm(&tmv)
        return Int64(t) * 1000 + Int64(ms)
    }

    public static func json(_ ms: Int64?) -> JSON {
        guard let ms else { return .null }
        return .string(rfc3339(ms))
    }
}
