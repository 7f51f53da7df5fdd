import Foundation
import Logging
import Testing
import KilnLogs
import KilnStore
import KilnTestSupport
@testable import KilnAPI
@testable import KilnEngine

/// docs/openapi.yaml validates, and documents exactly the routes the server registers.
@Suite(.timeLimit(.minutes(10)), .ownThread) struct OpenAPITests {
    @Test func theDocumentValidatesAndMatchesTheRouter() throws {
        let api = try TestAPI.make()
        let routes = api.routeTable.map { "\($0.method) \($0.template)" }
        #expect(routes.count == 13)
        let file = KilnServer.tempDir() + "/routes.txt"
        try Data((routes.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: file))
        let (status, out, err) = try Curl.exec("/usr/bin/env", ["python3", "\(KilnServer.packageRoot)/docs/check_openapi.py", file])
        let text = String(decoding: out + err, as: UTF8.self)
        #expect(status == 0, "\(text)")
        #expect(text.contains("openapi: 13 operations, valid"))
    }
}
