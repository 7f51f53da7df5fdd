import Foundation
import KilnHTTP
import Synchronization
import Logging
import Testing
import KilnLogs
import KilnStore
import KilnTestSupport
@testable import KilnAPI
@testable import KilnEngine

/// Every route states who may call it, and only `/healthz`, `/readyz` and `/metrics` are open.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct RouteAccessTests {
    @Test func everyRouteHasTheAccessRuleTheAccessTestsExpect() throws {
        let api = try TestAPI.make()
        let actual = api.router.accessTable.map { "\($0.method) \($0.template) \($0.access.permission?.rawValue ?? "open")" }
        let expected = APIRoutes.all.map { "\($0.method) \($0.template) \($0.permission ?? "open")" }
        #expect(actual == expected)
        for route in api.router.accessTable where route.access.permission == nil {
            #expect(["/healthz", "/readyz", "/metrics"].contains(route.template), "\(route.template) needs no token")
        }
        // Only the log stream takes the token as a query value (EventSource sends no headers).
        #expect(api.router.accessTable.filter(\.access.queryToken).map(\.template) == ["/v1/workloads/{id}/logs"])
    }

    @Test func rolesAllowWhatTheContractSays() {
        #expect(Permission.allCasesForTest.allSatisfy { Role.admin.allows($0) })
        #expect(Role.submit.allows(.read) && Role.submit.allows(.submit) && Role.submit.allows(.kill) && !Role.submit.allows(.admin))
        #expect(Role.read.allows(.read) && !Role.read.allows(.submit) && !Role.read.allows(.kill) && !Role.read.allows(.admin))
    }

    @Test func tokenFilesAreCheckedStrictly() throws {
        let good = "{\"tokens\": [{\"name\": \"ci\", \"tenant\": \"team-a\", \"role\": \"submit\", \"sha256\": \"\(String(repeating: "ab", count: 32))\", \"isolation\": [\"sandbox\"]}]}"
        let entries = try TokenSet.parse(Array(good.utf8), source: "t")
        #expect(entries.count == 1 && entries[0].tenant == "team-a" && entries[0].isolation == [.sandbox])
        let hex = String(repeating: "ab", count: 32)
        let bad = [
            "", "[]", "{}", "{\"tokens\": {}}", "{\"tokens\": [1]}", "{\"tokens\": [], \"x\": 1}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"t\", \"role\": \"root\", \"sha256\": \"\(hex)\"}]}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"T!\", \"role\": \"read\", \"sha256\": \"\(hex)\"}]}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"t\", \"role\": \"read\", \"sha256\": \"abc\"}]}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"t\", \"role\": \"read\", \"token\": \"plain\"}]}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"t\", \"role\": \"read\", \"sha256\": \"\(hex)\", \"isolation\": [\"auto\"]}]}",
            "{\"tokens\": [{\"name\": \"a\", \"tenant\": \"t\", \"role\": \"read\", \"sha256\": \"\(hex)\"}, {\"name\": \"b\", \"tenant\": \"t\", \"role\": \"read\", \"sha256\": \"\(hex)\"}]}",
            "{\"tokens\": [{\"name\": \"\", \"tenant\": \"t\", \"role\": \"read\", \"sha256\": \"\(hex)\"}]}",
        ]
        for text in bad {
            #expect(throws: ConfigError.self, "\(text)") { try TokenSet.parse(Array(text.utf8), source: "t") }
        }
    }

    @Test func aPresentedTokenMatchesOnlyItsOwnDigest() {
        let set = TokenSet(entries: [
            .init(name: "a", tenant: "t1", role: .read, digest: TokenSet.digest("alpha"), isolation: nil),
            .init(name: "b", tenant: "t2", role: .submit, digest: TokenSet.digest("beta"), isolation: [.sandbox]),
        ])
        #expect(set.authenticate("alpha")?.name == "a")
        #expect(set.authenticate("beta")?.isolation == [.sandbox])
        for wrong in ["", "alph", "alphaa", "Alpha", "beta ", TokenSet.hexDigest("alpha")] {
            #expect(set.authenticate(wrong) == nil, "\(wrong)")
        }
        #expect(TokenSet.hexDigest("secret") == "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b")
    }
}

extension Permission {
    static let allCasesForTest: [Permission] = [.read, .submit, .kill, .admin]
}

/// Requests that touch the store are answered from the store queue, never on the daemon
/// thread that called `respond`: their answer is always deferred.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct StoreOffloadTests {
    @Test func storeRoutesAnswerLater() throws {
        let api = try TestAPI.make()
        let id = "01JKQX7V8MZRN3B4HTGFWDCS9E"
        for (method, path) in [("GET", "/v1/workloads"), ("GET", "/v1/workloads/\(id)"), ("GET", "/v1/workloads/\(id)/logs"),
                               ("GET", "/v1/workloads/\(id)/logs/history"), ("GET", "/v1/stats"), ("DELETE", "/v1/workloads/\(id)"),
                               ("POST", "/v1/workloads/async"), ("POST", "/v1/workloads")] {
            let result = api.respond(to: HTTPRequest(method: method, path: path, body: Array(#"{"runtime": "shell", "code": "true"}"#.utf8)))
            guard case .later(let promise) = result else { Issue.record("\(method) \(path) was answered on the calling thread"); continue }
            let done = DispatchSemaphore(value: 0)
            let status = Mutex(0)
            promise.onResolve { r in status.withLock { $0 = r.status }; done.signal() }
            #expect(done.wait(timeout: .now() + 10) == .success, "\(method) \(path) never answered")
            #expect(status.withLock { $0 } >= 200, "\(method) \(path)")
        }
        // What needs no store is answered at once.
        guard case .now = api.respond(to: HTTPRequest(method: "GET", path: "/healthz")) else { Issue.record("healthz deferred"); return }
    }
}
