import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Tokens, roles and tenants against the real server: every caller against every route,
/// on a workload of its own tenant and of another.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct AccessControlTests {
    struct Token {
        var name: String
        var tenant: String
        var role: String
        var value: String
        var isolation: [String]? = nil
    }

    static let root = "root-token-\(UUID().uuidString.prefix(8))"
    static let tokens = [
        Token(name: "a-read", tenant: "team-a", role: "read", value: "tok-a-read"),
        Token(name: "a-submit", tenant: "team-a", role: "submit", value: "tok-a-submit"),
        Token(name: "b-read", tenant: "team-b", role: "read", value: "tok-b-read"),
        Token(name: "b-submit", tenant: "team-b", role: "submit", value: "tok-b-submit"),
        Token(name: "a-admin", tenant: "team-a", role: "admin", value: "tok-a-admin"),
        Token(name: "a-narrow", tenant: "team-a", role: "submit", value: "tok-a-narrow", isolation: ["sandbox"]),
    ]

    /// The digest as `kiln token hash` prints it (checked against sha256sum once).
    static func hash(_ token: String) throws -> String {
        let (status, out, err) = try Curl.exec(KilnServer.binary, ["token", "hash"], stdin: Array((token + "\n").utf8))
        guard status == 0 else { throw TestFailure("kiln token hash: \(String(decoding: err, as: UTF8.self))") }
        return String(decoding: out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func tokensFile() throws -> String {
        let entries = try tokens.map { t -> JSON in
            var members: [(String, JSON)] = [("name", .string(t.name)), ("tenant", .string(t.tenant)), ("role", .string(t.role)),
                                              ("sha256", .string(try hash(t.value)))]
            if let iso = t.isolation { members.append(("isolation", .array(iso.map { .string($0) }))) }
            return .object(members)
        }
        let path = KilnServer.tempDir("kiln-tokens") + "/tokens.json"
        try Data(JSON.object([("tokens", .array(entries))]).encoded()).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func start() throws -> KilnServer {
        try KilnServer.start(env: ["KILN_TOKENS_FILE": try tokensFile()], token: root)
    }

    func call(_ s: KilnServer, _ method: String, _ path: String, token: String?, body: String? = nil) throws -> HTTPReply {
        var headers: [String: String] = [:]
        if let token { headers["Authorization"] = "Bearer \(token)" }
        return try s.request(method, path, body: body, headers: headers, auth: false)
    }

    func submitAs(_ s: KilnServer, _ token: String, _ code: String) throws -> JSON {
        let r = try call(s, "POST", "/v1/workloads", token: token, body: #"{"runtime": "shell", "isolation": "process", "code": "\#(code)"}"#)
        guard r.status == 200 else { throw TestFailure("submit as \(token): \(r.status) \(r.text)") }
        return try r.json()
    }

    @Test func theHashCommandPrintsTheSHA256OfStdin() throws {
        let (_, out, _) = try Curl.exec("/usr/bin/sha256sum", [], stdin: Array("tok-a-read".utf8))
        #expect(try Self.hash("tok-a-read") == String(decoding: out, as: UTF8.self).split(separator: " ").first.map(String.init))
        let (status, _, err) = try Curl.exec(KilnServer.binary, ["token", "hash"], stdin: [])
        #expect(status != 0)
        #expect(String(decoding: err, as: UTF8.self).contains("no token"))
    }

    @Test func everyCallerAgainstEveryRoute() throws {
        let s = try Self.start()
        defer { s.stop() }
        let a = try #require(try submitAs(s, "tok-a-submit", "echo from-a")["id"]?.stringValue)
        let b = try #require(try submitAs(s, "tok-b-submit", "echo from-b")["id"]?.stringValue)
        let d = try #require(try submitAs(s, Self.root, "echo from-default")["id"]?.stringValue)
        let body = #"{"runtime": "shell", "isolation": "process", "code": "true"}"#

        // Callers: no token, a wrong one, then tokens of team-a (the workload's tenant),
        // team-b (another tenant), an admin of team-a, and KILN_API_TOKEN (admin of default).
        let callers: [String?] = [nil, "wrong-token", "tok-a-read", "tok-a-submit", "tok-b-read", "tok-b-submit", "tok-a-admin", Self.root]
        typealias Row = (method: String, template: String, path: String, body: String?, expect: [Int])
        let rows: [Row] = [
            ("GET", "/healthz", "/healthz", nil, [200, 200, 200, 200, 200, 200, 200, 200]),
            ("GET", "/readyz", "/readyz", nil, [200, 200, 200, 200, 200, 200, 200, 200]),
            ("GET", "/metrics", "/metrics", nil, [200, 200, 200, 200, 200, 200, 200, 200]),
            ("POST", "/v1/workloads", "/v1/workloads", body, [401, 401, 403, 200, 403, 200, 200, 200]),
            ("GET", "/v1/workloads", "/v1/workloads", nil, [401, 401, 200, 200, 200, 200, 200, 200]),
            ("POST", "/v1/workloads/async", "/v1/workloads/async", body, [401, 401, 403, 202, 403, 202, 202, 202]),
            ("GET", "/v1/workloads/{id}", "/v1/workloads/\(a)", nil, [401, 401, 200, 200, 404, 404, 200, 200]),
            // The workload is completed: a kill that passes every check is 409.
            ("DELETE", "/v1/workloads/{id}", "/v1/workloads/\(a)", nil, [401, 401, 403, 409, 403, 404, 409, 409]),
            ("GET", "/v1/workloads/{id}/logs", "/v1/workloads/\(a)/logs", nil, [401, 401, 200, 200, 404, 404, 200, 200]),
            ("GET", "/v1/workloads/{id}/logs/history", "/v1/workloads/\(a)/logs/history", nil, [401, 401, 200, 200, 404, 404, 200, 200]),
            ("GET", "/v1/backends", "/v1/backends", nil, [401, 401, 200, 200, 200, 200, 200, 200]),
            ("GET", "/v1/stats", "/v1/stats", nil, [401, 401, 200, 200, 200, 200, 200, 200]),
            ("GET", "/v1/nodes", "/v1/nodes", nil, [401, 401, 403, 403, 403, 403, 200, 200]),
        ]
        for route in APIRoutes.all {
            #expect(rows.contains { $0.method == route.method && $0.template == route.template }, "no row for \(route.method) \(route.template)")
        }
        for row in rows {
            for (caller, expected) in zip(callers, row.expect) {
                let r = try call(s, row.method, row.path, token: caller, body: row.body)
                #expect(r.status == expected, "\(row.method) \(row.path) as \(caller ?? "no token"): \(r.status) \(r.text.prefix(300))")
                if expected >= 400 {
                    let code = (try? r.json())?["error"]?["code"]?.stringValue
                    let want = [401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict"][expected]
                    #expect(code == want, "\(row.method) \(row.path) as \(caller ?? "no token"): \(r.text.prefix(300))")
                }
                if expected == 401 { #expect(r.header("WWW-Authenticate") == "Bearer") }
            }
        }
        // Another tenant's workload is exactly as absent as an unknown id.
        let unknown = try call(s, "GET", "/v1/workloads/01JKQX7V8MZRN3B4HTGFWDCS9E", token: "tok-b-read")
        let hidden = try call(s, "GET", "/v1/workloads/\(a)", token: "tok-b-read")
        #expect(hidden.text.replacingOccurrences(of: a, with: "ID") == unknown.text.replacingOccurrences(of: "01JKQX7V8MZRN3B4HTGFWDCS9E", with: "ID"))

        // The log stream also takes ?access_token= (and nothing else does).
        for (token, expected) in [("tok-a-read", 200), ("tok-b-read", 404), ("wrong-token", 401)] {
            #expect(try call(s, "GET", "/v1/workloads/\(a)/logs?access_token=\(token)", token: nil).status == expected, "\(token)")
        }
        #expect(try call(s, "GET", "/v1/workloads/\(a)?access_token=tok-a-read", token: nil).status == 401)
        #expect(try call(s, "GET", "/v1/stats?access_token=\(Self.root)", token: nil).status == 401)

        // Records carry their tenant; lists and stats show only the caller's tenant.
        #expect(try call(s, "GET", "/v1/workloads/\(a)", token: "tok-a-read").json()["tenant"] == .string("team-a"))
        #expect(try call(s, "GET", "/v1/workloads/\(d)", token: Self.root).json()["tenant"] == .string("default"))
        func ids(_ token: String, _ query: String = "") throws -> Set<String> {
            let r = try call(s, "GET", "/v1/workloads?limit=500\(query)", token: token)
            return Set((try r.json()["workloads"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue })
        }
        func tenants(_ token: String, _ query: String = "") throws -> Set<String> {
            let r = try call(s, "GET", "/v1/workloads?limit=500\(query)", token: token)
            return Set((try r.json()["workloads"]?.arrayValue ?? []).compactMap { $0["tenant"]?.stringValue })
        }
        #expect(try tenants("tok-a-read") == ["team-a"])
        #expect(try ids("tok-a-read").contains(a) && !(try ids("tok-a-read").contains(b)))
        #expect(try tenants("tok-b-submit") == ["team-b"])
        #expect(try tenants(Self.root) == ["team-a", "team-b", "default"])
        #expect(try tenants("tok-a-admin") == ["team-a", "team-b", "default"])
        #expect(try tenants(Self.root, "&tenant=team-b") == ["team-b"])
        #expect(try ids(Self.root, "&tenant=nobody").isEmpty)
        #expect(try call(s, "GET", "/v1/workloads?tenant=team-b", token: "tok-a-read").status == 403)
        #expect(try call(s, "GET", "/v1/workloads?tenant=team-a", token: "tok-a-read").status == 200)
        #expect(try call(s, "GET", "/v1/workloads?tenant=Bad!", token: Self.root).status == 422)
        let statsA = try call(s, "GET", "/v1/stats", token: "tok-a-read").json()
        let statsAll = try call(s, "GET", "/v1/stats", token: Self.root).json()
        let totalA = try #require(statsA["workloads"]?["total"]?.int64Value)
        let totalAll = try #require(statsAll["workloads"]?["total"]?.int64Value)
        #expect(totalA == Int64(try ids("tok-a-read").count))
        #expect(totalAll == Int64(try ids(Self.root).count))
        #expect(totalA < totalAll)
        // /metrics stays open and shows totals only: no tenant in it.
        let metrics = try call(s, "GET", "/metrics", token: nil).text
        #expect(!metrics.contains("team-a") && !metrics.contains("tenant"))
    }

    @Test func killCrossesNoTenant() throws {
        let s = try Self.start()
        defer { s.stop() }
        let r = try call(s, "POST", "/v1/workloads/async", token: "tok-a-submit",
                         body: #"{"runtime": "shell", "isolation": "process", "code": "sleep 60"}"#)
        let id = try #require(try r.json()["id"]?.stringValue)
        try s.waitRunning(id)
        #expect(try call(s, "DELETE", "/v1/workloads/\(id)", token: "tok-b-submit").status == 404)
        #expect(try call(s, "DELETE", "/v1/workloads/\(id)", token: "tok-a-read").status == 403)
        #expect(try call(s, "GET", "/v1/workloads/\(id)", token: "tok-a-read").json()["status"] == .string("running"))
        let killed = try call(s, "DELETE", "/v1/workloads/\(id)", token: "tok-a-submit")
        #expect(killed.status == 200)
        #expect(try killed.json()["status"] == .string("killed"))
    }

    @Test func aTokensOwnIsolationListNarrowsTheServers() throws {
        let s = try Self.start()
        defer { s.stop() }
        let r = try call(s, "POST", "/v1/workloads", token: "tok-a-narrow", body: #"{"runtime": "shell", "isolation": "process", "code": "id"}"#)
        #expect(r.status == 422)
        #expect(try r.json()["error"]?["code"] == .string("isolation_not_allowed"))
        #expect(try r.json()["error"]?["message"]?.stringValue?.hasSuffix("allowed: sandbox") == true, "\(r.text)")
        let backends = try call(s, "GET", "/v1/backends", token: "tok-a-narrow").json()
        let allowed = (backends["backends"]?.arrayValue ?? []).filter { $0["allowed"] == .bool(true) }.compactMap { $0["name"]?.stringValue }
        #expect(allowed == ["sandbox"])
        // The same request with an unnarrowed token of the same tenant runs.
        #expect(try call(s, "POST", "/v1/workloads", token: "tok-a-submit", body: #"{"runtime": "shell", "isolation": "process", "code": "id"}"#).status == 200)
    }

    @Test func aMalformedTokensFileStopsTheServer() throws {
        let dir = KilnServer.tempDir("kiln-badtokens")
        let cases = [
            "not json",
            #"{"tokens": [{"name": "x", "tenant": "t", "role": "read", "token": "plaintext"}]}"#,
            #"{"tokens": [{"name": "x", "tenant": "t", "role": "root", "sha256": "\#(String(repeating: "0", count: 64))"}]}"#,
        ]
        for (i, text) in cases.enumerated() {
            let path = "\(dir)/t\(i).json"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            let (status, _, err) = try Curl.exec(KilnServer.binary, ["serve", "--listen", "127.0.0.1:0", "--db", "\(dir)/k.db", "--tokens-file", path])
            #expect(status == 2, "\(text)")
            let message = String(decoding: err, as: UTF8.self)
            #expect(message.contains("KILN_TOKENS_FILE") && message.split(separator: "\n").count == 1, "\(message)")
        }
        let (status, _, err) = try Curl.exec(KilnServer.binary, ["serve", "--listen", "127.0.0.1:0", "--db", "\(dir)/k.db", "--tokens-file", "\(dir)/missing.json"])
        #expect(status == 2)
        #expect(String(decoding: err, as: UTF8.self).contains("cannot read"))
    }
}
