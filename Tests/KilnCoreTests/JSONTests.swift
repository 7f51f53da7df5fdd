import Foundation
import Testing
@testable import KilnCore

@Suite(.timeLimit(.minutes(10))) struct JSONTests {
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

@Suite(.timeLimit(.minutes(10))) struct ULIDTests {
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

@Suite(.timeLimit(.minutes(10))) struct TimeTests {
    @Test func formatsRFC3339WithMilliseconds() {
        #expect(Millis.rfc3339(0) == "1970-01-01T00:00:00.000Z")
        #expect(Millis.rfc3339(1_795_672_800_043) == "2026-11-26T06:00:00.043Z")
    }
}

@Suite(.timeLimit(.minutes(10))) struct StateMachineTests {
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
