import Foundation
import Logging
import KilnLogs
import KilnStore
@testable import KilnAPI
@testable import KilnEngine

/// A KilnAPI over an in-memory store and an engine without backends (nothing can run):
/// for tests of routing, access and deferral.
enum TestAPI {
    static func make(environment: [String: String] = [:]) throws -> KilnAPI {
        let engine = Engine(store: try SQLiteStore(path: ":memory:"), broker: LogBroker(), backends: [],
                            config: EngineConfig(maxConcurrent: 1, queueLimit: 1, workRoot: NSTemporaryDirectory() + "kiln-test-api"),
                            logger: Logger(label: "test"))
        return KilnAPI(config: try ServerConfig.resolve(flags: [:], environment: environment), engine: engine,
                       logger: Logger(label: "test"), version: "test", metricsText: { [] }, accessLog: { _ in })
    }
}
