import Foundation
import Testing
import KilnCore
import KilnTestSupport

/// Storage errors (SPEC §8) on a real full disk: the database lives on a small tmpfs the
/// test mounts, and a file fills what is left of it while a workload floods its log.
@Suite(.enabled(if: getuid() == 0, "needs root, to mount a small tmpfs for the database"),
       .enabled(if: Backends.runnable("process"), "needs the process backend"),
       .timeLimit(.minutes(5)), .ownThread)
struct StorageErrorTests {
    @Test func aFullDiskFailsTheFloodingWorkloadKeepsItsStoredLinesAndRecoversWithoutARestart() throws {
        let mnt = try mountTmpfs("kiln-full-disk")
        defer { _ = try? Curl.exec("/bin/umount", ["-l", mnt]) }
        let s = try KilnServer.start(db: mnt + "/kiln.db")
        defer { _ = s.stop() }
        #expect(try s.request("GET", "/readyz").status == 200)

        // A synchronous flood, answered on a thread of its own.
        let flood = #"{"runtime": "python", "isolation": "process", "resources": {"timeout_s": 120}, "code": "i = 0\nwhile True:\n    i += 1\n    print('x' * 200, i, flush=(i % 1000 == 0))"}"#
        let answer = Locked<HTTPReply?>(nil)
        let answered = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            answer.withLock { $0 = try? s.request("POST", "/v1/workloads", body: flood, timeout: 120) }
            answered.signal()
        }
        let id = try waitForRunning(s)
        let stored = Date().addingTimeInterval(30)
        while try !hasStored(s, id, 10_000) {
            try #require(Date() < stored, "the flood stored fewer than 10,000 lines in 30 s")
            usleep(50_000)
        }

        // Fill the disk. dd stops at ENOSPC (and exits non-zero, which is the point).
        let filler = mnt + "/filler"
        _ = try Curl.exec("/bin/dd", ["if=/dev/zero", "of=\(filler)", "bs=1M"])
        try waitFor(s, "/readyz", status: 503)
        let (readyCode, ready) = try s.json("GET", "/readyz")
        #expect(readyCode == 503 && ready["reason"]?.stringValue?.contains("full") == true, "\(ready.text)")

        // The flood is stopped and answered with a terminal record naming the cause.
        try #require(answered.wait(timeout: .now() + 60) == .success, "the synchronous flood got no answer")
        let reply = try #require(answer.withLock { $0 }, "the synchronous flood's request failed")
        let record = try reply.json()
        #expect(reply.status == 200 && record["status"] == .string("failed"), "\(record.text)")
        #expect(record["error"]?.stringValue?.contains("cannot store the log") == true, "\(record.text)")
        #expect(record["error"]?.stringValue?.contains("full") == true, "\(record.text)")

        // New work is refused with 507 while the store refuses writes.
        let (refused, refusal) = try s.json("POST", "/v1/workloads/async", body: #"{"runtime": "shell", "isolation": "process", "code": "echo hi"}"#)
        #expect(refused == 507 && refusal["error"]?["code"] == .string("insufficient_storage"), "\(refusal.text)")

        // Space returns: the server recovers on its own and stores the held end.
        #expect(unlink(filler) == 0)
        try waitFor(s, "/readyz", status: 200)
        let (_, after) = try s.json("GET", "/v1/workloads/\(id)")
        #expect(after["status"] == .string("failed") && after["error"] == record["error"], "\(after.text)")
        try expectGapFreeLog(s, id, after)
        #expect(try s.run(#"{"runtime": "shell", "isolation": "process", "code": "echo back"}"#)["status"] == .string("completed"))
    }

    /// A database with zeroed pages (a torn disk, a bad copy) opened, said healthy and
    /// failed later with 500; now it is refused at start, with one line and exit 2, and
    /// left byte for byte as it was.
    @Test func aDatabaseWithZeroedPagesIsRefusedAtStart() throws {
        let dir = KilnServer.tempDir("kiln-zeroed")
        let path = dir + "/kiln.db"
        let s = try KilnServer.start(db: path)
        _ = try s.run(#"{"runtime": "shell", "isolation": "process", "code": "seq 20000"}"#)
        #expect(s.stop() == 0)
        // Checkpoint the WAL into the file, then zero four pages in the middle of it.
        let (checked, _, checkErr) = try Curl.exec("/usr/bin/env", ["python3", "-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1]); db.execute("PRAGMA wal_checkpoint(TRUNCATE)"); db.close()
            f = open(sys.argv[1], "r+b"); f.seek(0, 2); pages = f.tell() // 4096
            f.seek((pages // 2) * 4096); f.write(bytes(4 * 4096)); f.close()
            print(pages)
            """, path])
        try #require(checked == 0, "\(String(decoding: checkErr, as: UTF8.self))")
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let (code, _, err) = try Curl.exec(KilnServer.binary, ["serve", "--db", path, "--listen", "127.0.0.1:0"])
        let message = String(decoding: err, as: UTF8.self)
        #expect(code == 2, "exit \(code): \(message)")
        #expect(message.split(separator: "\n").count == 1 && message.contains("is damaged") && message.contains(path), "\(message)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the damaged file was changed")
    }

    /// A database on a read-only file system is refused at start with one line naming the
    /// cause and exit 2 (it opened, migrated nothing and would fail its first write), and
    /// nothing is left behind; once writable, the same database starts.
    @Test func aReadOnlyDatabaseIsRefusedAtStart() throws {
        let mnt = try mountTmpfs("kiln-read-only")
        defer { _ = try? Curl.exec("/bin/umount", ["-l", mnt]) }
        let first = try KilnServer.start(db: mnt + "/kiln.db")
        #expect(try first.run(#"{"runtime": "shell", "isolation": "process", "code": "echo kept"}"#)["status"] == .string("completed"))
        #expect(first.stop() == 0)
        try remount(mnt, "ro")
        let before = try FileManager.default.contentsOfDirectory(atPath: mnt).sorted()
        let (code, _, err) = try Curl.exec(KilnServer.binary, ["serve", "--db", mnt + "/kiln.db", "--listen", "127.0.0.1:0"])
        let message = String(decoding: err, as: UTF8.self)
        #expect(code == 2, "exit \(code): \(message)")
        #expect(message.split(separator: "\n").count == 1 && message.contains("cannot be written") && message.contains(mnt), "\(message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mnt).sorted() == before)
        try remount(mnt, "rw")
        let again = try KilnServer.start(db: mnt + "/kiln.db")
        #expect(try again.json("GET", "/v1/workloads").1["workloads"]?.arrayValue?.count == 1)
    }

    private func mountTmpfs(_ name: String) throws -> String {
        let mnt = KilnServer.tempDir(name)
        let (mounted, _, mountErr) = try Curl.exec("/bin/mount", ["-t", "tmpfs", "-o", "size=48m", "tmpfs", mnt])
        try #require(mounted == 0, "mount: \(String(decoding: mountErr, as: UTF8.self))")
        return mnt
    }

    private func remount(_ mnt: String, _ mode: String) throws {
        let (code, _, err) = try Curl.exec("/bin/mount", ["-o", "remount,\(mode)", mnt])
        try #require(code == 0, "remount \(mode): \(String(decoding: err, as: UTF8.self))")
    }

    /// Every line read is stored, in order, with no hole: 1...log_lines.
    private func expectGapFreeLog(_ s: KilnServer, _ id: String, _ record: JSON) throws {
        let logLines = try #require(record["log_lines"]?.int64Value)
        var expected: Int64 = 1
        var next: Int64 = 0
        while true {
            let page = try s.json("GET", "/v1/workloads/\(id)/logs/history?after=\(next)&limit=10000").1
            for line in page["lines"]?.arrayValue ?? [] {
                #expect(line["seq"]?.int64Value == expected)
                expected += 1
            }
            guard let n = page["next_after"]?.int64Value else { break }
            next = n
        }
        #expect(expected - 1 == logLines, "the stored log has \(expected - 1) lines, the record says \(logLines)")
    }

    @Test func aDamagedDatabaseStopsTheServerAtStartAndIsLeftAsItWas() throws {
        let dir = KilnServer.tempDir("kiln-damaged")
        let path = dir + "/kiln.db"
        let garbage = Array("this is not a database, and must stay as it is\n".utf8) + [UInt8](repeating: 0x5a, count: 8192)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(garbage)))
        let (code, _, err) = try Curl.exec(KilnServer.binary, ["serve", "--db", path, "--listen", "127.0.0.1:0"])
        let message = String(decoding: err, as: UTF8.self)
        #expect(code == 2, "exit \(code): \(message)")
        #expect(message.split(separator: "\n").count == 1 && message.contains(path), "\(message)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(garbage))
    }

    private func waitForRunning(_ s: KilnServer) throws -> String {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let id = try s.json("GET", "/v1/workloads?status=running").1["workloads"]?.arrayValue?.first?["id"]?.stringValue {
                return id
            }
            usleep(20_000)
        }
        throw TestFailure("the flood did not start within 30 s")
    }

    /// Whether line `seq` is stored (the record's log_lines is the live count while it runs).
    private func hasStored(_ s: KilnServer, _ id: String, _ seq: Int64) throws -> Bool {
        try s.json("GET", "/v1/workloads/\(id)/logs/history?after=\(seq - 1)&limit=1").1["lines"]?.arrayValue?.isEmpty == false
    }

    private func waitFor(_ s: KilnServer, _ path: String, status: Int, timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while try s.request("GET", path).status != status {
            try #require(Date() < deadline, "\(path) did not answer \(status) within \(timeout) s")
            usleep(100_000)
        }
    }
}
