import KilnTestSupport
import Testing
@testable import KilnLogs

@Suite(.timeLimit(.minutes(10)), .ownThread) struct LineSplitterTests {
    func split(_ chunks: [[UInt8]], max: Int = LineSplitter.defaultMaxLineBytes) -> [String] {
        var s = LineSplitter(maxLineBytes: max)
        var out: [String] = []
        for c in chunks { s.feed(c) { out.append($0) } }
        s.finish { out.append($0) }
        return out
    }

    @Test func splitsAtLFAndDropsCRBeforeIt() {
        #expect(split([Array("a\nb\r\nc".utf8)]) == ["a", "b", "c"])
    }

    @Test func keepsCRInsideALine() {
        #expect(split([Array("a\rb\n".utf8)]) == ["a\rb"])
    }

    @Test func dropsCRAtTheVeryEnd() {
        #expect(split([Array("x\r".utf8)]) == ["x"])
    }

    @Test func joinsLinesAcrossChunks() {
        #expect(split([Array("hel".utf8), Array("lo\r".utf8), Array("\nwor".utf8), Array("ld".utf8)]) == ["hello", "world"])
    }

    @Test func keepsEmptyLines() {
        #expect(split([Array("\n\na\n".utf8)]) == ["", "", "a"])
    }

    @Test func replacesInvalidUTF8() {
        #expect(split([[0x61, 0xFF, 0x62, 0x0A]]) == ["a\u{FFFD}b"])
    }

    @Test func splitsLongLinesWithoutBreakingCharacters() {
        let line = String(repeating: "é", count: 100) // 200 bytes
        let parts = split([Array((line + "\n").utf8)], max: 64)
        #expect(parts.joined() == line)
        #expect(parts.allSatisfy { $0.utf8.count <= 64 && !$0.contains("\u{FFFD}") })
        #expect(parts.count == 4)
    }

    @Test func aCRLFAtTheSplitPointMakesNoEmptyLine() {
        let body = String(repeating: "y", count: 63)
        // 64 bytes then CR in one read, LF in the next: the CR belongs to the line end.
        #expect(split([Array((body + "z\r").utf8), Array("\nnext\n".utf8)], max: 64) == [body + "z", "next"])
    }

    @Test func splitsA64KiBLineIntoSeveral() {
        let line = String(repeating: "x", count: 150_000)
        let parts = split([Array(line.utf8)])
        #expect(parts.map(\.utf8.count) == [65536, 65536, 150_000 - 131_072])
    }
}
