import Foundation

/// A real PostgreSQL server for one test suite: `initdb` in a temp folder, started with
/// `pg_ctl` on a free loopback port (its socket in that folder too), stopped and removed
/// by `stop()`. PostgreSQL refuses to run as root, so as root it runs as `postgres`.
public final class PostgresServer: Sendable {
    public let port: Int
    public let dir: String
    public let password = "s3cret-\(UInt32.random(in: 1..<UInt32.max))"
    static let bin = "/usr/lib/postgresql/15/bin"

    /// Why a PostgreSQL server cannot be started here (nil: it can).
    public static var unavailableReason: String? {
        FileManager.default.isExecutableFile(atPath: "\(bin)/pg_ctl") ? nil : "PostgreSQL 15 is not installed (make deps installs it)"
    }

    /// `postgres://kiln:…@127.0.0.1:port/kiln`
    public var url: String { "postgres://kiln:\(password)@127.0.0.1:\(port)/kiln" }

    public init() throws {
        dir = KilnServer.tempDir("kiln-pg")
        port = PostgresServer.freePort()
        let asRoot = getuid() == 0
        let data = dir + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let pwfile = dir + "/pw"
        try password.write(toFile: pwfile, atomically: true, encoding: .utf8)
        if asRoot { _ = try Curl.exec("/bin/chown", ["-R", "postgres:postgres", dir]) }
        try run(["\(PostgresServer.bin)/initdb", "-D", data, "-U", "kiln", "--pwfile", pwfile, "-A", "scram-sha-256", "-E", "UTF8"], asRoot)
        // Spawned and reaped by hand, with /dev/null for its stdio: the server pg_ctl starts
        // inherits the descriptors (a pipe read to its end would never close), and Foundation's
        // `Process.waitUntilExit` was seen never to return for this child.
        let status = try PostgresServer.spawnAndWait(startCommand)
        guard status == 0 else { throw TestFailure("pg_ctl start exited \(status); see \(dir)/log") }
        try run(["\(PostgresServer.bin)/psql", "-h", dir, "-p", "\(port)", "-U", "kiln", "-d", "postgres", "-c", "CREATE DATABASE kiln"],
                asRoot, env: ["PGPASSWORD": password])
    }

    private var startCommand: [String] {
        (getuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--"] : [])
            + ["\(PostgresServer.bin)/pg_ctl", "-D", dir + "/data", "-l", dir + "/log", "-w", "-t", "60",
               "-o", "-c listen_addresses=127.0.0.1 -p \(port) -k \(dir) -c fsync=off -c max_connections=200", "start"]
    }

    private func run(_ argv: [String], _ asRoot: Bool, env: [String: String] = [:]) throws {
        let full = asRoot ? ["/usr/sbin/runuser", "-u", "postgres", "--", "/usr/bin/env"] + env.map { "\($0)=\($1)" } + argv
                          : ["/usr/bin/env"] + env.map { "\($0)=\($1)" } + argv
        let (code, out, err) = try Curl.exec(full[0], Array(full.dropFirst()))
        guard code == 0 else {
            throw TestFailure("\(argv[0]) exited \(code): \(String(decoding: out + err, as: UTF8.self))")
        }
    }

    /// Stops the server (`fast`: connections are closed), keeping its data: `resume` starts it
    /// again on the same port (a database that goes away and comes back).
    public func pause() throws {
        try run(["\(PostgresServer.bin)/pg_ctl", "-D", dir + "/data", "-m", "fast", "-w", "stop"], getuid() == 0)
    }

    public func resume() throws {
        let status = try PostgresServer.spawnAndWait(startCommand)
        guard status == 0 else { throw TestFailure("pg_ctl start exited \(status); see \(dir)/log") }
    }

    /// Stops the server (`fast`: connections are closed) and removes its folder.
    public func stop() {
        let asRoot = getuid() == 0
        try? run(["\(PostgresServer.bin)/pg_ctl", "-D", dir + "/data", "-m", "fast", "-w", "stop"], asRoot)
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Runs `argv` with stdin, stdout and stderr on /dev/null and returns its exit status.
    static func spawnAndWait(_ argv: [String]) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        let cargs = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid = pid_t()
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        guard rc == 0 else { throw TestFailure("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
