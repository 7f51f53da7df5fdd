import Foundation
import Testing
import KilnTestSupport

/// The compose file requires a token and publishes on loopback only. No Docker engine (nor
/// Compose v2) runs here, so the file is read as YAML; the image's own refusal to start
/// without a token is checked by docker/check-image.sh (needs root and a release build).
@Suite(.timeLimit(.minutes(10)), .ownThread) struct DockerFilesTests {
    @Test func composeRequiresATokenAndBindsToLoopback() throws {
        let script = """
        import sys, yaml
        doc = yaml.safe_load(open(sys.argv[1]))
        svc = doc["services"]["kiln"]
        env = svc["environment"]
        token = env.get("KILN_API_TOKEN", "")
        assert token.startswith("${KILN_API_TOKEN:?") and token.endswith("}") and len(token) > 22, "token not required: %r" % token
        ports = svc["ports"]
        assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), "published beyond loopback: %r" % ports
        assert "KILN_ALLOW_UNAUTHENTICATED" not in env, "compose turns the token check off"
        print("ok")
        """
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", "-c", script, "\(KilnServer.packageRoot)/docker/compose.yaml"])
        #expect(status == 0, "\(String(decoding: err, as: UTF8.self))")
        #expect(String(decoding: out, as: UTF8.self) == "ok\n")
    }

    /// The cluster file: PostgreSQL, one api node published on loopback, two workers, every
    /// node on the same database with a token, and no secret written into the file.
    @Test func theClusterComposeFileHasAnAPINodeTwoWorkersAndRequiredSecrets() throws {
        let script = """
        import sys, yaml
        doc = yaml.safe_load(open(sys.argv[1]))
        svc = doc["services"]
        assert set(svc) == {"postgres", "api", "worker"}, sorted(svc)
        assert svc["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${KILN_PG_PASSWORD:?")
        assert svc["worker"]["deploy"]["replicas"] == 2
        dbs = set()
        for name in ("api", "worker"):
            env = svc[name]["environment"]
            assert env["KILN_ROLE"] == name, (name, env.get("KILN_ROLE"))
            assert env["KILN_API_TOKEN"].startswith("${KILN_API_TOKEN:?"), name
            assert env["KILN_DB"].startswith("postgres://kiln:${KILN_PG_PASSWORD:?"), env["KILN_DB"]
            assert "KILN_ALLOW_UNAUTHENTICATED" not in env
            assert svc[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
            dbs.add(env["KILN_DB"])
        assert len(dbs) == 1, dbs
        assert all(str(p).startswith("127.0.0.1:") for p in svc["api"]["ports"])
        assert "ports" not in svc["worker"] and "ports" not in svc["postgres"]
        print("ok")
        """
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", "-c", script, "\(KilnServer.packageRoot)/docker/compose.cluster.yaml"])
        #expect(status == 0, "\(String(decoding: err, as: UTF8.self))")
        #expect(String(decoding: out, as: UTF8.self) == "ok\n")
    }

    @Test func theImageListensBeyondLoopbackSoItNeedsAToken() throws {
        let dockerfile = try String(contentsOfFile: "\(KilnServer.packageRoot)/docker/Dockerfile", encoding: .utf8)
        #expect(dockerfile.contains("KILN_LISTEN=0.0.0.0:8080"))
        #expect(!dockerfile.contains("KILN_ALLOW_UNAUTHENTICATED"))
        // And the binary refuses that address without a token (exit 2).
        let dir = KilnServer.tempDir("kiln-image")
        let env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KILN_") }
            .map { "\($0.key)=\($0.value)" } + ["KILN_LISTEN=0.0.0.0:0", "KILN_DB=\(dir)/kiln.db"]
        let (status, _, err) = try Curl.exec("/usr/bin/env", ["-i"] + env + [KilnServer.binary, "serve"])
        #expect(status == 2)
        #expect(String(decoding: err, as: UTF8.self).contains("refusing to listen on 0.0.0.0:0 without a token"))
    }
}
