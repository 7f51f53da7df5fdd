import Foundation
import Testing
import KilnTestSupport
@testable import KilnAPI

/// `Settings.all` is the one table of `KILN_*` settings: the README's configuration table
/// and `kiln serve --help` must say the same.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct SettingsTests {
    @Test func theReadmeTableIsTheRegistry() throws {
        let readme = try String(contentsOfFile: "\(KilnServer.packageRoot)/README.md", encoding: .utf8)
        let section = try #require(readme.range(of: "## Configuration").map { readme[$0.upperBound...] })
        let rows = section.split(separator: "\n").drop { !$0.hasPrefix("| variable") }.dropFirst(2)
            .prefix { $0.hasPrefix("|") }
            .map { line in line.split(separator: "|", omittingEmptySubsequences: false).dropFirst().dropLast()
                .map { $0.trimmingCharacters(in: .whitespaces) } }
        let expected = Settings.all.map { ["`\($0.name)`", $0.shownDefault, $0.meaning] }
        #expect(rows.count == expected.count)
        for (row, want) in zip(rows, expected) {
            #expect(row == want)
        }
    }

    @Test func theTenantShareIsEverySlotUnlessSetAndMustBeAWholeNumber() throws {
        let env = ["KILN_DB": ":memory:"]
        #expect(try ServerConfig.resolve(flags: [:], environment: env).tenantMaxConcurrent == nil)
        #expect(try ServerConfig.resolve(flags: [:], environment: env.merging(["KILN_TENANT_MAX_CONCURRENT": "3"]) { $1 })
            .tenantMaxConcurrent == 3)
        #expect(try ServerConfig.resolve(flags: ["KILN_TENANT_MAX_CONCURRENT": "2"], environment: env).tenantMaxConcurrent == 2)
        for bad in ["0", "-1", "x", "10001"] {
            #expect {
                _ = try ServerConfig.resolve(flags: [:], environment: env.merging(["KILN_TENANT_MAX_CONCURRENT": bad]) { $1 })
            } throws: { "\($0)".contains("KILN_TENANT_MAX_CONCURRENT") }
        }
    }

    @Test func sandboxUIDsAreARangeOfAtLeastSixteenNonSystemUIDsWithoutNobody() throws {
        #expect(try ServerConfig.uidRange("200000-265535") == 200_000...265_535)
        #expect(try ServerConfig.uidRange(" 1000-1015 ") == 1000...1015)
        #expect(try ServerConfig.resolve(flags: [:], environment: ["KILN_DB": ":memory:"]).sandboxUIDs == 200_000...265_535)
        for bad in ["", "5", "0-100000", "999-2000", "2000-2010", "60000-70000", "300-200", "1000-", "-1000-2000", "a-b", "1000-3000000000"] {
            #expect { _ = try ServerConfig.uidRange(bad) } throws: { "\($0)".contains("KILN_SANDBOX_UIDS") }
        }
    }

    @Test func retentionIsAWholeNumberWithAUnit() throws {
        #expect(try ServerConfig.retention("") == nil)
        #expect(try ServerConfig.retention("30d") == 30 * 86_400)
        #expect(try ServerConfig.retention("12h") == 12 * 3600)
        #expect(try ServerConfig.retention(" 90m ") == 5400)
        #expect(try ServerConfig.retention("45s") == 45)
        for bad in ["0d", "-1h", "1.5h", "10", "d", "1w", "999999999999d"] {
            #expect(throws: ConfigError.self, "\(bad)") { _ = try ServerConfig.retention(bad) }
        }
    }

    @Test func serveHasExactlyTheRegistrysFlags() throws {
        let (_, out, _) = try Curl.exec(KilnServer.binary, ["serve", "--help"])
        let help = String(decoding: out, as: UTF8.self)
        let flags = Set(help.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "," })
            .filter { $0.hasPrefix("--") && $0 != "--help" && $0 != "--version" }.map { String($0.prefix { $0 != "=" && $0 != "<" }) })
        #expect(flags == Set(Settings.all.map(\.flag)))
        for setting in Settings.all {
            #expect(help.contains("(\(setting.name))"), "no help for \(setting.name)")
        }
    }

    @Test func everyVariableIsReadWithItsDefault() throws {
        let config = try ServerConfig.resolve(flags: [:], environment: [:])
        #expect(config.host == "127.0.0.1" && config.port == 8080)
        #expect(config.isolation == [.sandbox, .gvisor, .isolate])
        #expect(ServerConfig.variables.map(\.name) == Settings.all.map(\.name))
        #expect(Settings.named("KILN_MAX_CONCURRENT").flag == "--max-concurrent")
        #expect(!Settings.named("KILN_TOKENS_FILE").help.contains("](#"))
        #expect(Settings.named("KILN_TOKENS_FILE").help.contains("backend list (Access control) (KILN_TOKENS_FILE)"))
    }
}
