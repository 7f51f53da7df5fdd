import Foundation
import KilnCore

/// Which isolation backends a server on this machine can use, probed once by starting the
/// real binary and reading `/v1/backends`. Tests that need a backend say so with
/// `.enabled(if: Backends.runnable("sandbox"), "…")`: elsewhere they are skipped with that
/// reason, never passed silently. Under `KILN_REQUIRE_BACKENDS=1` (CI on a machine that has
/// them all) they always run, so a missing backend fails them instead.
public enum Backends {
    public static var required: Bool { ProcessInfo.processInfo.environment["KILN_REQUIRE_BACKENDS"] == "1" }

    /// name → the reason it is unavailable (nil: available).
    static let probed: [String: String?] = {
        guard let s = try? KilnServer.start(isolation: KilnServer.allBackends), let list = try? s.json("GET", "/v1/backends").1["backends"]?.arrayValue else {
            return [:]
        }
        s.stop()
        var out: [String: String?] = [:]
        for b in list {
            guard let name = b["name"]?.stringValue else { continue }
            out[name] = b["available"] == .bool(true) ? .some(nil) : .some(b["reason"]?.stringValue ?? "no reason given")
        }
        return out
    }()

    public static func available(_ name: String) -> Bool {
        if let entry = probed[name], entry == nil { return true }
        return false
    }

    /// Why `name` is unavailable here (nil when it is available).
    public static func reason(_ name: String) -> String? {
        guard let entry = probed[name] else { return "not listed by /v1/backends" }
        return entry
    }

    /// Whether a test that needs every one of `names` runs: they are available, or they are required.
    public static func runnable(_ names: String...) -> Bool {
        if required { return true }
        let missing = names.filter { !available($0) }
        for name in missing { print("SKIPPED: backend \(name) is unavailable here: \(reason(name) ?? "")") }
        return missing.isEmpty
    }
}
