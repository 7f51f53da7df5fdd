import ArgumentParser
import Foundation

@main
struct KilnCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "A self-hosted workload runner with live log streaming.",
        version: ServerRunner.version,
        subcommands: [ServeCommand.self, RunCommand.self, StatusCommand.self, LogsCommand.self, ListCommand.self,
                      KillCommand.self, RemoveCommand.self, BackendsCommand.self, StatsCommand.self, TokenCommand.self])
}
