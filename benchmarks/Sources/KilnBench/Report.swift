import Foundation

/// A JSON value with ordered object keys (results files read better in a fixed order).
/// Declared Sendable explicitly: inferring it through the recursive payload makes the compiler
/// report a circular reference.
enum JV: Sendable {
    case num(Double)
    case int(Int)
    case str(String)
    case bool(Bool)
    case arr([JV])
    case obj([(String, JV)])
    case null

    func render(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent + 1)
        let end = String(repeating: "  ", count: indent)
        switch self {
        case .num(let d):
            if !d.isFinite { return "null" }
            return String(format: "%.3f", d).replacingOccurrences(of: #"\.?0+$"#, with: "", options: .regularExpression)
        case .int(let i): return String(i)
        case .str(let s): return JV.quote(s)
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .arr(let a):
            if a.isEmpty { return "[]" }
            if a.allSatisfy({ if case .obj = $0 { return false }; if case .arr = $0 { return false }; return true }) {
                return "[" + a.map { $0.render() }.joined(separator: ", ") + "]"
            }
            return "[\n" + a.map { pad + $0.render(indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "]"
        case .obj(let o):
            if o.isEmpty { return "{}" }
            return "{\n" + o.map { pad + JV.quote($0.0) + ": " + $0.1.render(indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

/// One measured figure of a case, with its target when the issue sets one.
struct Metric {
    /// Which way a figure is better: latencies and memory lower, rates higher.
    enum Better: Sendable { case lower, higher }
    enum Goal {
        case atMost(Double), atLeast(Double), equals(Double)
        /// B5: the value is Kiln's, the payload the peer server's; met when Kiln is ahead.
        case ahead(ofPeer: Double, Better)
    }
    var name: String
    var value: Double
    var unit: String
    var goal: Goal?

    var met: Bool? {
        guard let goal else { return nil }
        guard value.isFinite else { return false }
        switch goal {
        case .atMost(let t): return value <= t
        case .atLeast(let t): return value >= t
        case .equals(let t): return value == t
        case .ahead(let peer, let better):
            guard peer.isFinite else { return false }
            return better == .lower ? value < peer : value > peer
        }
    }

    /// The peer's value, for B5's comparisons.
    var peer: Double? {
        if case .ahead(let p, _)? = goal { return p }
        return nil
    }

    /// Kiln / peer (above 1 is ahead for rates, below 1 for latencies and memory).
    var ratio: Double? { peer.map { value / $0 } }

    var targetText: String {
        guard let goal else { return "" }
        switch goal {
        case .atMost(let t): return "≤ " + fmt(t)
        case .atLeast(let t): return "≥ " + fmt(t)
        case .equals(let t): return "= " + fmt(t)
        case .ahead(_, let better): return better == .lower ? "< peer" : "> peer"
        }
    }

    var json: JV {
        var o: [(String, JV)] = [("name", .str(name)), ("value", .num(value)), ("unit", .str(unit))]
        if let goal {
            switch goal {
            case .atMost(let t): o.append(("target", .obj([("at_most", .num(t))])))
            case .atLeast(let t): o.append(("target", .obj([("at_least", .num(t))])))
            case .equals(let t): o.append(("target", .obj([("equals", .num(t))])))
            case .ahead(let peer, let better):
                o.append(("peer_value", .num(peer)))
                o.append(("ratio_kiln_to_peer", .num(value / peer)))
                o.append(("target", .obj([("kiln_ahead", .str(better == .lower ? "lower is better" : "higher is better"))])))
            }
            o.append(("met", .bool(met ?? false)))
        }
        return .obj(o)
    }
}

func fmt(_ v: Double) -> String {
    if !v.isFinite { return "n/a" }
    if v == v.rounded() && abs(v) < 1e15 {
        let i = Int(v)
        // Thousands separators for big counts.
        let s = String(abs(i))
        var out = ""
        for (n, c) in s.reversed().enumerated() {
            if n > 0 && n % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (i < 0 ? "-" : "") + String(out.reversed())
    }
    if abs(v) >= 100 { return String(format: "%.0f", v) }
    if abs(v) >= 10 { return String(format: "%.1f", v) }
    if abs(v) < 0.1 { return String(format: "%.3f", v) }
    return String(format: "%.2f", v)
}

/// A ratio with about three significant digits.
func ratioText(_ r: Double) -> String {
    if !r.isFinite { return "n/a" }
    if abs(r) >= 100 { return String(format: "%.0f", r) }
    if abs(r) >= 10 { return String(format: "%.1f", r) }
    if abs(r) >= 1 { return String(format: "%.2f", r) }
    return String(format: "%.3g", r)
}

/// One benchmark case: its parameters, figures and any details worth keeping.
struct CaseResult {
    var benchmark: String
    var name: String
    var params: [(String, JV)] = []
    var metrics: [Metric] = []
    var details: [(String, JV)] = []
    var error: String?

    var json: JV {
        var o: [(String, JV)] = [("benchmark", .str(benchmark)), ("case", .str(name)),
                                   ("params", .obj(params)), ("metrics", .arr(metrics.map { $0.json }))]
        let goals = metrics.compactMap { $0.met }
        o.append(("targets_met", goals.isEmpty ? .null : .bool(goals.allSatisfy { $0 } && error == nil)))
        if !details.isEmpty { o.append(("details", .obj(details))) }
        if let error { o.append(("error", .str(error))) }
        return .obj(o)
    }
}

/// The results as a table; with B5 in the run, two more columns: the peer's value and Kiln / peer.
func printTable(_ cases: [CaseResult]) {
    let comparing = cases.contains { $0.metrics.contains { $0.peer != nil } }
    var rows: [[String]] = [["bench", "case", "metric", "value", "unit", "target", "met"] + (comparing ? ["peer", "kiln/peer"] : [])]
    for c in cases {
        if let e = c.error {
            rows.append([c.benchmark, c.name, "ERROR", String(e.prefix(60)), "", "", "no"] + (comparing ? ["", ""] : []))
        }
        for m in c.metrics {
            var row = [c.benchmark, c.name, m.name, fmt(m.value), m.unit, m.targetText, m.met.map { $0 ? "yes" : "NO" } ?? ""]
            if comparing { row += [m.peer.map(fmt) ?? "", m.ratio.map(ratioText) ?? ""] }
            rows.append(row)
        }
    }
    var widths = [Int](repeating: 0, count: rows[0].count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    var last = ""
    for (n, r) in rows.enumerated() {
        let key = r[0] + r[1]
        var cells = r
        if n > 1 && key == last { cells[0] = ""; cells[1] = "" }
        last = key
        let line = cells.enumerated().map { i, c in
            let padN = widths[i] - c.count
            return (i == 3 || i >= 7) ? String(repeating: " ", count: padN) + c : c + String(repeating: " ", count: padN)
        }.joined(separator: "  ")
        print(line)
        if n == 0 { print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
    }
}
