import Foundation
import Testing
@testable import KilnEngine

@Suite struct IsolateHostScriptTests {
    @Test func theEmbeddedHostIsTheCurrentHostSource() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/KilnEngine/isolate/host.mjs")
        let source = try String(contentsOf: file, encoding: .utf8)
        #expect(IsolateHostScript.source + "\n" == source, "run `make embed` after editing isolate/host.mjs")
    }
}
