import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Safe start (no token, no network), `KILN_*_FILE` secrets, and what the server's own
/// output never contains.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct SecureStartTests {
    /// Runs `kiln serve` with `env` (no other KILN_ variable) until it prints its listening
    /// line or exits; returns (exit status or nil while running, stdout, stderr).
    func serve(_ args: [String], env: [String: String] = [:]) throws -> (Int32?, String, String) {
        let dir = KilnServer.tempDir("kiln-start")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: KilnServer.binary)
        p.arguments = ["serve", "--db", "\(dir)/kiln.db"] + args
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KILN_") }
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        let out = "\(dir)/out", err = "\(dir)/err"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: err, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        try p.run()
        let deadline = Date().addingTimeInterval(20)
        var text = ""
        while Date() < deadline, p.isRunning {
            text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            if text.contains("listening on") { break }
            usleep(20_000)
        }
        let running = p.isRunning
        if running { kill(p.processIdentifier, SIGTERM) }
        p.waitUntilExit()
        return (running ? nil : p.terminationStatus, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    @Test func aNetworkAddressWithoutATokenIsRefused() throws {
        for listen in ["0.0.0.0:0", "[::]:0", ":0"] {
            let (status, _, err) = try serve(["--listen", listen])
            #expect(status == 2, "\(listen)")
            #expect(err.contains("refusing to listen") && err.contains("KILN_ALLOW_UNAUTHENTICATED"), "\(err)")
            #expect(err.split(separator: "\n").count == 1, "\(err)")
        }
        // Loopback needs no token; a token, or the explicit opt-out, allow any address.
        for listen in ["127.0.0.1:0", "127.1.2.3:0", "localhost:0"] {
            let (status, out, err) = try serve(["--listen", listen])
            #expect(status == nil && out.contains("listening on"), "\(listen): \(err)")
        }
        let (withToken, out1, _) = try serve(["--listen", "0.0.0.0:0"], env: ["KILN_API_TOKEN": "t"])
        #expect(withToken == nil && out1.contains("listening on http://0.0.0.0:"))
        let (optOut, out2, _) = try serve(["--listen", "0.0.0.0:0", "--allow-unauthenticated", "1"])
        #expect(optOut == nil && out2.contains("listening on"))
        let (badOptOut, _, err3) = try serve(["--listen", "0.0.0.0:0"], env: ["KILN_ALLOW_UNAUTHENTICATED": "yes"])
        #expect(badOptOut == 2 && err3.contains("KILN_ALLOW_UNAUTHENTICATED"))
    }

    @Test func everyVariableCanComeFromAFile() throws {
        let dir = KilnServer.tempDir("kiln-secrets")
        let tokenFile = "\(dir)/token"
        try Data("file-token\n".utf8).write(to: URL(fileURLWithPath: tokenFile))
        let limitFile = "\(dir)/limit"
        try Data("7".utf8).write(to: URL(fileURLWithPath: limitFile))
        let s = try KilnServer.start(env: ["KILN_API_TOKEN_FILE": tokenFile, "KILN_QUEUE_LIMIT_FILE": limitFile])
        defer { s.stop() }
        #expect(try s.request("GET", "/v1/stats", auth: false).status == 401)
        #expect(try s.request("GET", "/v1/stats", headers: ["Authorization": "Bearer file-token"], auth: false).status == 200)
        // Both forms at once, an unreadable file, or a bad value in the file: exit 2.
        let (both, _, e1) = try serve(["--listen", "127.0.0.1:0"], env: ["KILN_API_TOKEN": "x", "KILN_API_TOKEN_FILE": tokenFile])
        #expect(both == 2 && e1.contains("both KILN_API_TOKEN and KILN_API_TOKEN_FILE"), "\(e1)")
        let (missing, _, e2) = try serve(["--listen", "127.0.0.1:0"], env: ["KILN_API_TOKEN_FILE": "\(dir)/nope"])
        #expect(missing == 2 && e2.contains("KILN_API_TOKEN_FILE"), "\(e2)")
        try Data("-3".utf8).write(to: URL(fileURLWithPath: limitFile))
        let (bad, _, e3) = try serve(["--listen", "127.0.0.1:0"], env: ["KILN_QUEUE_LIMIT_FILE": limitFile])
        #expect(bad == 2 && e3.contains("KILN_QUEUE_LIMIT"), "\(e3)")
        // The token's value is never printed, whatever goes wrong.
        #expect(!(e1 + e2 + e3).contains("file-token"))
    }

    /// The access log, byte for byte: the token in any letter case or encoding, in the
    /// query or hidden in the path, is REDACTED.
    @Test func accessTokensAreRedactedInEveryForm() throws {
        let secret = "zq9Secret"
        let s = try KilnServer.start(token: secret)
        defer { s.stop() }
        let id = try s.submit(#"{"runtime": "shell", "isolation": "process", "code": "echo hi"}"#)
        _ = try s.waitTerminal(id)
        let enc = secret.utf8.map { String(format: "%%%02X", $0) }.joined()
        let cases: [(String, String)] = [
            ("/v1/workloads/\(id)/logs?access_token=\(secret)", "/v1/workloads/\(id)/logs?access_token=REDACTED"),
            ("/v1/workloads/\(id)/logs?ACCESS_TOKEN=\(secret)", "/v1/workloads/\(id)/logs?ACCESS_TOKEN=REDACTED"),
            ("/v1/workloads/\(id)/logs?Access_Token=\(secret)&tail=1", "/v1/workloads/\(id)/logs?Access_Token=REDACTED&tail=1"),
            ("/v1/workloads/\(id)/logs?access%5Ftoken=\(enc)", "/v1/workloads/\(id)/logs?access_token=REDACTED"),
            ("/v1/workloads/\(id)/logs?%61ccess_token=\(secret)", "/v1/workloads/\(id)/logs?access_token=REDACTED"),
            ("/v1/workloads/\(id)/logs?access%255Ftoken=\(secret)", "/v1/workloads/\(id)/logs?REDACTED=REDACTED"),
            ("/v1/workloads/\(id)/logs?tail=1&x=%26access_token%3D\(secret)", "/v1/workloads/\(id)/logs?tail=1&x=REDACTED"),
            ("/v1/workloads/\(id)/logs?a%3Daccess_token%3D\(secret)=1", "/v1/workloads/\(id)/logs?REDACTED=REDACTED"),
            ("/v1/workloads/x%3Faccess_token%3D\(secret)/logs", "/v1/workloads/REDACTED"),
            ("/v1/workloads/x%3FACCESS_TOKEN=\(secret)/logs", "/v1/workloads/REDACTED"),
            ("/v1/workloads/x%253Faccess%255Ftoken%253D\(secret)", "/v1/workloads/REDACTED"),
            ("/v1/workloads/x%3Faccess_token=\(secret)%2Flogs%2F\(secret)", "/v1/workloads/REDACTED"),
            ("/v1/%3Faccess_token=/\(secret)", "/v1/REDACTED"),
        ]
        for (path, _) in cases {
            _ = try s.request("GET", path, auth: false, timeout: 10)
        }
        s.stop()
        let out = s.stdoutText
        #expect(!out.contains(secret), "the token reached stdout")
        #expect(!out.lowercased().contains(secret.lowercased()))
        #expect(!out.contains(enc) && !out.lowercased().contains("%25\(String(format: "%02x", secret.utf8.first!))"))
        let logged = out.split(separator: "\n").compactMap { try? JSON.parse(Array($0.utf8)) }.compactMap { $0["path"]?.stringValue }
        for (_, expected) in cases {
            #expect(logged.contains(expected), "no access log line with path \(expected)")
        }
    }

    /// Code, input and env values never reach the server's output, whatever happens to
    /// the workload.
    @Test func codeInputAndEnvAreNeverLogged() throws {
        let s = try KilnServer.start(args: ["--log-level", "trace"], token: "tok")
        let markers = (1...6).map { "mk\($0)x\(UUID().uuidString.prefix(6))" }
        let bodies = [
            #"{"runtime": "shell", "isolation": "process", "code": "echo \#(markers[0]); exit 3", "input": {"k": "\#(markers[1])"}, "env": {"K": "\#(markers[2])"}}"#,
            #"{"runtime": "python", "isolation": "sandbox", "code": "raise SystemExit('\#(markers[3])')"}"#,
            #"{"runtime": "node", "isolation": "isolate", "code": "export default () => { throw new Error('\#(markers[4])') }"}"#,
            #"{"runtime": "node", "isolation": "isolate", "code": "export default ( => '\#(markers[5])'"}"#,
            #"{"runtime": "python", "code": "\#(markers[0])(", "resources": {"timeout_s": 1}}"#,
            #"{"runtime": "shell", "code": 1, "input": "\#(markers[1])"}"#,
        ]
        for body in bodies {
            _ = try s.request("POST", "/v1/workloads", body: body, timeout: 30)
        }
        s.stop()
        let everything = s.stdoutText + s.stderrText
        for m in markers {
            #expect(!everything.contains(m), "\(m) reached the server's output")
        }
    }
}
