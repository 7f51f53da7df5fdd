import Foundation
import PostgresNIO

/// `KILN_DB=postgres://user:password@host:port/database`: where a cluster's database is,
/// and how to name it in a log line without its password.
public struct PostgresURL: Sendable {
    public var host: String
    public var port: Int
    public var username: String
    var password: String?
    public var database: String?

    public static func isPostgres(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    public init(_ text: String) throws {
        guard PostgresURL.isPostgres(text), let c = URLComponents(string: text), let host = c.host, !host.isEmpty else {
            throw URLError(description: "KILN_DB must look like postgres://user:password@host:port/database")
        }
        self.host = host
        self.port = c.port ?? 5432
        self.username = c.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        self.password = c.password.flatMap { $0.removingPercentEncoding }
        let path = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
        self.database = path.isEmpty ? nil : path
    }

    /// The address as a log line may show it: the password replaced by `***`.
    public var redacted: String {
        "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database ?? "")"
    }

    var clientConfiguration: PostgresClient.Configuration {
        var c = PostgresClient.Configuration(host: host, port: port, username: username, password: password,
                                             database: database, tls: .disable)
        c.options.connectTimeout = .seconds(3)
        c.options.maximumConnections = 8
        return c
    }

    var connectionConfiguration: PostgresConnection.Configuration {
        var c = PostgresConnection.Configuration(host: host, port: port, username: username, password: password,
                                                 database: database, tls: .disable)
        c.options.connectTimeout = .seconds(3)
        return c
    }

    struct URLError: Error, CustomStringConvertible {
        let description: String
    }
}
