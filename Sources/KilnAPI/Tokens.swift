import Crypto
import Foundation
import KilnCore

/// The tokens a server accepts: `KILN_API_TOKEN` (admin of `default`) and the entries of
/// `KILN_TOKENS_FILE`. Only SHA-256 digests are kept, the file holds nothing else, and a
/// presented token is hashed and compared with every digest in constant time.
public struct TokenSet: Sendable {
    public struct Entry: Sendable {
        public var name: String
        public var tenant: String
        public var role: Role
        public var digest: [UInt8]
        public var isolation: Set<Isolation>?
    }

    public private(set) var entries: [Entry]
    /// Whether any token is configured; without one every request is `Caller.unauthenticated`.
    public let enabled: Bool

    public init(apiToken: String?, tokensFile: String?) throws {
        var entries: [Entry] = []
        if let apiToken {
            entries.append(Entry(name: "KILN_API_TOKEN", tenant: Tenant.default, role: .admin,
                                 digest: TokenSet.digest(apiToken), isolation: nil))
        }
        if let tokensFile {
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: tokensFile))
            } catch {
                throw ConfigError(description: "invalid KILN_TOKENS_FILE (--tokens-file): cannot read \(tokensFile): \(error.localizedDescription)")
            }
            entries += try TokenSet.parse(Array(data), source: tokensFile)
        }
        self.entries = entries
        self.enabled = apiToken != nil || tokensFile != nil
    }

    init(entries: [Entry]) {
        self.entries = entries
        self.enabled = true
    }

    public static func digest(_ token: String) -> [UInt8] {
        Array(SHA256.hash(data: Array(token.utf8)))
    }

    /// Lowercase hex of a token's SHA-256, as `kiln token hash` prints it.
    public static func hexDigest(_ token: String) -> String {
        digest(token).map { String(format: "%02x", $0) }.joined()
    }

    /// The caller a presented token stands for, or nil. Every entry is compared, whatever
    /// matches, so the time taken does not say which entry (or how much of one) matched.
    public func authenticate(_ presented: String) -> Caller? {
        let d = TokenSet.digest(presented)
        var match: Entry? = nil
        for entry in entries {
            if constantTimeEqual(d, entry.digest) { match = entry }
        }
        return match.map { Caller(name: $0.name, tenant: $0.tenant, role: $0.role, isolation: $0.isolation) }
    }

    /// `{"tokens": [{"name", "tenant", "role", "sha256", "isolation"?}]}`; anything else is refused.
    static func parse(_ bytes: [UInt8], source: String) throws -> [Entry] {
        func bad(_ why: String) -> ConfigError {
            ConfigError(description: "invalid KILN_TOKENS_FILE (--tokens-file) \(source): \(why)")
        }
        let value: JSON
        do { value = try JSON.parse(bytes) } catch { throw bad("not valid JSON: \(error)") }
        guard case .object(let top) = value else { throw bad("expected an object with a \"tokens\" array") }
        guard top.allSatisfy({ $0.0 == "tokens" }), let list = value["tokens"]?.arrayValue else {
            throw bad("expected an object with only a \"tokens\" array")
        }
        var entries: [Entry] = []
        var names = Set<String>()
        var digests = Set<[UInt8]>()
        for (i, item) in list.enumerated() {
            let at = "tokens[\(i)]"
            guard case .object(let members) = item else { throw bad("\(at) is not an object") }
            let known: Set<String> = ["name", "tenant", "role", "sha256", "isolation"]
            if let unknown = members.first(where: { !known.contains($0.0) }) { throw bad("\(at) has an unknown key \"\(unknown.0)\"") }
            guard let name = item["name"]?.stringValue, !name.isEmpty, name.count <= 128 else { throw bad("\(at).name must be a string of 1 to 128 characters") }
            guard names.insert(name).inserted else { throw bad("\(at).name \"\(name)\" is used twice") }
            guard let tenant = item["tenant"]?.stringValue, Tenant.isValid(tenant) else {
                throw bad("\(at).tenant must be 1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
            }
            guard let roleText = item["role"]?.stringValue, let role = Role(rawValue: roleText) else {
                throw bad("\(at).role must be one of admin, submit, read")
            }
            guard let hex = item["sha256"]?.stringValue, let digest = TokenSet.bytes(hex: hex) else {
                throw bad("\(at).sha256 must be 64 hex digits (the SHA-256 of the token, from `kiln token hash`)")
            }
            guard digests.insert(digest).inserted else { throw bad("\(at).sha256 is used twice") }
            var isolation: Set<Isolation>? = nil
            if let iso = item["isolation"], !iso.isNull {
                guard let names = iso.arrayValue else { throw bad("\(at).isolation must be an array of backend names") }
                var set = Set<Isolation>()
                for n in names {
                    guard let s = n.stringValue, let i = Isolation(rawValue: s), i != .auto else {
                        throw bad("\(at).isolation entries must be process, sandbox, gvisor or isolate")
                    }
                    set.insert(i)
                }
                isolation = set
            }
            entries.append(Entry(name: name, tenant: tenant, role: role, digest: digest, isolation: isolation))
        }
        return entries
    }

    static func bytes(hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count == 64 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(32)
        var i = 0
        while i < 64 {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}

/// Constant-time comparison: the time depends on the lengths only.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var diff = UInt8(a.count == b.count ? 0 : 1)
    let n = max(a.count, b.count)
    for i in 0..<n {
        let x = i < a.count ? a[i] : 0
        let y = i < b.count ? b[i] : 0
        diff |= x ^ y
    }
    return diff == 0
}
