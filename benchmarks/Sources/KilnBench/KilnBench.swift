import ArgumentParser
import Foundation

@main
struct KilnBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln-bench",
        abstract: "Kiln's benchmarks: SSE fan-out (B1), idle streams (B2), throughput (B3), log ingest (B4), against a Hummingbird peer (B5), limits (B6), cluster mode (B7).",
        subcommands: [RunCommand.self, ReliabilityCommand.self, SSEWorkerCommand.self],
        defaultSubcommand: RunCommand.self
    )
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start a Kiln server per benchmark, run the chosen benchmarks, print a table, write JSON."
    )

    @Argument(help: "Benchmarks to run: b1 b2 b3 b4 b5 b6 b7, or all.")
    var benchmarks: [String] = ["all"]

    @OptionGroup var common: CommonOptions

    @Option(help: "B5: the peer server (default: peers/hummingbird-peer/.build/release/kiln-peer in the benchmarks folder).")
    var peer: String?

    @Option(help: "B1 cases, comma-separated, each s<subscribers>-r<lines per second|max>; the issue's: s1000-r1000,s10000-r100,s1000-rmax.")
    var b1Cases = "s1000-r1000,s10000-r100,s1000-rmax"

    @Option(help: "B1: seconds of printing for the paced cases.")
    var b1Seconds = 10.0

    @Option(help: "B1: lines printed in the R=max case.")
    var b1MaxLines = 20_000

    @Option(help: "B2: idle streams.")
    var b2Streams = 19_000

    @Option(help: "B2: seconds to hold them.")
    var b2Hold = 30.0

    @Option(help: "B2: KILN_HEARTBEAT_S for the server.")
    var b2Heartbeat = 5

    @Option(help: "B3: runs at concurrency 1.")
    var b3Runs1 = 500

    @Option(help: "B3: runs at concurrency 16.")
    var b3Runs16 = 2_000

    @Option(help: "B4: lines the workload prints.")
    var b4Lines = 1_000_000

    @Option(help: "B5: seconds of wrk against /healthz per server.")
    var b5WrkSeconds = 10

    @Option(help: "B5: wrk connections.")
    var b5WrkConnections = 64

    @Option(help: "Before each benchmark, wait up to this many seconds for the machine to be idle (other work skews figures).")
    var waitIdle = 120.0

    @Option(help: "Subscribers per worker process (each stream is one fd; the per-process limit is 20,000).")
    var perProcess = 9_500

    @Option(help: "Event loop threads per worker process (default: 2 with one worker, else 1).")
    var loops: Int?

    func run() throws {
        prepareProcess()
        let quick = common.quick
        let benchDir = findBenchmarksDir()
        var cfg = BenchConfig()
        cfg.kiln = try common.kiln ?? findKiln(benchDir)
        cfg.peer = peer ?? benchDir + "/peers/hummingbird-peer/.build/release/kiln-peer"
        cfg.quick = quick
        cfg.b1Cases = b1Cases.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        cfg.b1Seconds = b1Seconds
        cfg.b1MaxLines = b1MaxLines
        cfg.b2Streams = b2Streams
        cfg.b2HoldSeconds = b2Hold
        cfg.b2Heartbeat = b2Heartbeat
        cfg.b3Runs1 = b3Runs1
        cfg.b3Runs16 = b3Runs16
        cfg.b4Lines = b4Lines
        cfg.b5WrkSeconds = b5WrkSeconds
        cfg.b5WrkConnections = b5WrkConnections
        cfg.perProcess = perProcess
        cfg.loops = loops
        cfg.waitIdle = waitIdle
        let chosen = try selectNames(benchmarks, from: ["b1", "b2", "b3", "b4", "b5", "b6", "b7"], what: "benchmarks")
        log("kiln binary: \(cfg.kiln)\(quick ? " (quick sizes)" : "")")

        let bench = Bench(cfg)
        let started = Date()
        let loadBefore = loadAverage()
        var cases: [CaseResult] = []
        for b in ["b1", "b2", "b3", "b4", "b5", "b6", "b7"] where chosen.contains(b) {
            let busy = waitIdle > 0 ? waitForQuietMachine(maxSeconds: waitIdle) : machineBusy(over: 1)
            let a = machineTicks()
            let t0 = monoNs()
            var got: [CaseResult]
            switch b {
            case "b1": got = bench.b1()
            case "b2": got = bench.b2()
            case "b3": got = bench.b3()
            case "b4": got = bench.b4()
            case "b6": got = bench.b6()
            case "b7": got = bench.b7()
            default: got = bench.b5()
            }
            let z = machineTicks()
            let machineCPU = Double(z.busy - a.busy) / Double(sysconf(Int32(_SC_CLK_TCK)))
            for i in got.indices {
                got[i].details.append(("machine_busy_before", .num(busy)))
                got[i].details.append(("machine_cpu_s_during_benchmark", .num(machineCPU)))
                got[i].details.append(("benchmark_wall_s", .num(Double(monoNs() - t0) / 1e9)))
            }
            if busy > 0.25 { log(String(format: "warning: the machine was %.0f%% busy before %@", busy * 100, b)) }
            cases += got
        }
        print("")
        printTable(cases)

        let iso = ISO8601DateFormatter()
        let doc: JV = .obj([
            ("tool", .str("kiln-bench")),
            ("started_at", .str(iso.string(from: started))),
            ("finished_at", .str(iso.string(from: Date()))),
            ("quick", .bool(quick)),
            ("machine", machineJSON(loadBefore: loadBefore)),
            ("kiln_binary", .str(cfg.kiln)),
            ("peer_binary", chosen.contains("b5") ? .str(cfg.peer) : .null),
            ("benchmarks", .arr(chosen.sorted().map { .str($0) })),
            ("cases", .arr(cases.map { $0.json })),
        ])
        try writeResults(doc, to: common.out ?? benchDir + "/results/latest.json")
        let missed = cases.filter { c in c.error != nil || c.metrics.contains { $0.met == false } }
        if !missed.isEmpty {
            print("targets missed in: " + missed.map { "\($0.benchmark) \($0.name)" }.joined(separator: "; "))
        }
    }
}

struct SSEWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sse-worker",
        abstract: "(internal) Hold SSE streams in this process; driven by `run` through stdin and stdout."
    )

    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option var path: String
    @Option var count: Int
    @Option var mode: String
    @Option var expectedLines = 0
    @Option var loops = 1
    @Option var deadline = 300.0
    @Option var connectConcurrency = 256

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        guard let m = SSEMode(rawValue: mode) else { throw ValidationError("mode: fanout, ingest or idle") }
        guard host.hasPrefix("127.") || host == "localhost" else { throw ValidationError("loopback addresses only") }
        var o = SSEWorkerOptions()
        o.host = host
        o.port = port
        o.path = path
        o.count = count
        o.mode = m
        o.expectedLines = expectedLines
        o.loops = loops
        o.deadlineSeconds = deadline
        o.connectConcurrency = connectConcurrency
        SSEWorker(o).run()
    }
}
