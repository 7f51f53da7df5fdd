import ArgumentParser
import Foundation
import KilnAPI

/// `kiln token hash`: the SHA-256 digest of a token, for `KILN_TOKENS_FILE`.
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Work with API tokens.", subcommands: [Hash.self])

    struct Hash: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hash",
            abstract: "Print the SHA-256 digest of a token read from stdin, for KILN_TOKENS_FILE.",
            discussion: "The token is read from standard input (one trailing newline is dropped), so it never appears in a process list or a shell history: `kiln token hash < token.txt`.")

        func run() throws {
            var data = FileHandle.standardInput.readDataToEndOfFile()
            if data.last == 0x0A { data.removeLast() }
            if data.last == 0x0D { data.removeLast() }
            guard !data.isEmpty, let token = String(data: data, encoding: .utf8) else {
                throw ValidationError("no token on standard input (expected UTF-8 text)")
            }
            print(TokenSet.hexDigest(token))
        }
    }
}
