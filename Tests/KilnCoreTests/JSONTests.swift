import Foundation
import KilnTestSupport
import Testing
@testable import KilnCore

@Suite(.timeLimit(.minutes(10)), .ownThread) struct JSONTests {
    @Test func parsesAndEncodesEveryKind() throws {
        let v = try JSON.parse(#"{"a": [1, 2.5, "x\n\"y", true, null, {"b": -7}]}"#)
        #expect(v["a"]?.arrayValue?.count == 6)
        #expect(v["a"]?.arrayValue?[0] == .int(1))
        #expect(v["a"]?.arrayValue?[1] == .double(2.5))
        #expect(v["a"]?.arrayValue?[2] == .string("x\n\"y"))
        let again = try JSON.parse(v.text)
        #expect(again == v)
    }

    @Test func refusesNaNAndGarbage() {
        #expect(throws: (any Error).self) { try JSON.parse("NaN") }
        #expect(throws: (any Error).self) { try JSON.parse("{\"a\": }") }
        #expect(throws: (any Error).self) { try JSON.parse("[1,]") }
    }

    @Test func acceptsTopLevelScalars() throws {
        #expect(try JSON.parse("3") == .int(3))
        #expect(try JSON.parse("\"s\"") == .string("s"))
        #expect(try JSON.parse("null") == .null)
    }

    @Test func escapesControlCharacters() {
        #expect(JSON.string("a\u{01}b\tc\r").text == #""a\u0001b\tc\r""#)
    }

    @Test func keepsLargeIntegersExact() throws {
        #expect(try JSON.parse("9007199254740993") == .int(9_007_199_254_740_993))
        #expect(JSON.int(9_007_199_254_740_993).text == "9007199254740993")
    }
}

@Suite(.timeLimit(.minutes(10)), .ownThread) struct ULIDTests {
    @Test func idsAreValidAndIncreaseWithinOneMillisecond() {
        let g = ULIDGenerator()
        let now = Date()
        var last = ""
        for _ in 0..<1000 {
            let id = g.next(now: now)
            #expect(ULIDGenerator.isValid(id))
            #expect(id > last)
            last = id
        }
    }

    @Test func timePrefixOrdersAcrossMilliseconds() {
        let g = ULIDGenerator()
        let a = g.next(now: Date(timeIntervalSince1970: 1_000))
        let b = g.next(now: Date(timeIntervalSince1970: 2_000))
        #expect(a < b)
        #expect(a.prefix(10) != b.prefix(10))
    }

    @Test func rejectsMalformedIds() {
        #expect(!ULIDGenerator.isValid("../../etc/passwd"))
        #expect(!ULIDGenerator.isValid("01M8BKXHHPAZQSGBQTA3DEZGV"))
        #expect(!ULIDGenerator.isValid("01M8BKXHHPAZQSGBQTA3DEZGVU"))
    }
}

@Suite(.timeLimit(.minutes(10)), .ownThread) struct TimeTests {
    @Test func formatsRFC3339WithMilliseconds() {
        #expect(Millis.rfc3339(0) == "1970-01-01T00:00:00.000Z")
        #expect(Millis.rfc3339(1_795_672_800_043) == "2026-11-26T06:00:00.043Z")
    }
}

@Suite(.timeLimit(.minutes(10)), .ownThread) struct StateMachineTests {
    @Test func allowedTransitionsAreExactlyTheSpecs() {
        let allowed: Set<String> = ["pending>running", "pending>killed", "pending>failed",
                                    "running>completed", "running>failed", "running>killed"]
        for a in WorkloadStatus.allCases {
            for b in WorkloadStatus.allCases {
                #expect(a.canMove(to: b) == allowed.contains("\(a.rawValue)>\(b.rawValue)"), "\(a) -> \(b)")
            }
        }
    }
}

/// The model's JSON mapping goes both ways without loss (the CLI reads what the server writes).
@Suite(.timeLimit(.minutes(10)), .ownThread) struct ModelMappingTests {
    @Test func aRecordSurvivesItsJSON() throws {
        let full = WorkloadRecord(id: "01JKQX7V8MZRN3B4HTGFWDCS9E", status: .failed, runtime: .python, isolation: .auto,
                                  isolationUsed: .sandbox, exitCode: 3, outputJSON: #"{"a":[1,"x"]}"#, outputTruncated: true,
                                  error: "exited with code 3", resources: Resources(cpus: 2, memMB: 512, timeoutS: 60),
                                  logLines: 12, durationMs: 41, createdAt: 1_780_000_000_123, startedAt: 1_780_000_000_125,
                                  finishedAt: 1_780_000_000_166, tenant: "team-a")
        #expect(try WorkloadRecord(json: try JSON.parse(full.json.encoded())) == full)
        let bare = WorkloadRecord(id: "01JKQX7V8MZRN3B4HTGFWDCS9F", status: .pending, runtime: .shell, isolation: .gvisor,
                                  resources: Resources(cpus: 1, memMB: 256, timeoutS: 30), createdAt: 1_780_000_000_000)
        #expect(try WorkloadRecord(json: try JSON.parse(bare.json.encoded())) == bare)
        #expect(throws: JSONMappingError.self) { try WorkloadRecord(json: .object([("id", .string("x"))])) }
        let end = EndInfo(status: .killed, exitCode: nil, error: "killed by request", logLines: 4)
        #expect(EndInfo(json: try JSON.parse(end.json.encoded())) == end)
    }

    @Test func timesReadBackAsWritten() {
        for ms: Int64 in [0, 1, 999, 1_780_000_000_123, 4_102_444_799_999] {
            #expect(Millis.parse(Millis.rfc3339(ms)) == ms)
        }
        #expect(Millis.parse("2026-11-26T06:00:00Z") == Millis.parse("2026-11-26T06:00:00.000Z"))
        for bad in ["", "2026-11-26", "2026-11-26T06:00:00.000", "2026-11-26T06:00:00.00Z", "20x6-11-26T06:00:00.000Z"] {
            #expect(Millis.parse(bad) == nil, "\(bad)")
        }
    }
}
