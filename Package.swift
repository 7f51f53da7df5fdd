// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Kiln",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        // The first process of every workload, installed beside kiln (CModules/KilnInit).
        .executable(name: "kiln-init", targets: ["kiln-init"]),
        // The fuzz target (make fuzz); built plainly it replays inputs.
        .executable(name: "kiln-fuzz", targets: ["KilnFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // SHA-256 of tokens (KILN_TOKENS_FILE holds digests only).
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // Cluster mode's store (KILN_DB=postgres://…).
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // libmicrohttpd, found through pkg-config.
        .systemLibrary(
            name: "CMicroHTTPD",
            path: "CModules/CMicroHTTPD",
            pkgConfig: "libmicrohttpd",
            providers: [.apt(["libmicrohttpd-dev"])]
        ),
        // Linux process shims (clone into a PID namespace, spawn, pipes), a C target built
        // with _GNU_SOURCE so flags and syscall numbers come from the system headers.
        .target(name: "CKilnSys", path: "CModules/CKilnSys", cSettings: [.define("_GNU_SOURCE")]),
        // The first process of every workload: joins its cgroup, forks it, reaps, forwards
        // its status. Plain C, so it starts without a language runtime.
        .executableTarget(name: "kiln-init", path: "CModules/KilnInit",
                          linkerSettings: [.unsafeFlags(["-nostartfiles"])]),
        // libmicrohttpd, its request/response bridge, framing, request targets and slow
        // clients: the only importer of CMicroHTTPD.
        .target(name: "KilnHTTP", dependencies: ["CMicroHTTPD"]),
        // Child processes: spawning into a PID namespace, pipes, process-wide limits.
        .target(name: "KilnProcess", dependencies: ["CKilnSys", "KilnCore"]),
        // Shared value types: JSON, ULID, workload model, time formatting.
        .target(name: "KilnCore"),
        // The live log: the broker (window, cursors, catch-up) and line splitting.
        .target(name: "KilnLogs", dependencies: ["KilnCore"]),
        // The store seam (WorkloadStore) and its SQLite implementation.
        .target(
            name: "KilnStore",
            dependencies: ["KilnCore", .product(name: "GRDB", package: "GRDB.swift"),
                           // SQLite's C API, for the one hot insert (SQLiteStore.appendLines).
                           .product(name: "GRDBSQLite", package: "GRDB.swift")]
        ),
        // The PostgreSQL store and the cluster's queue, nodes and announcements (cluster mode).
        .target(
            name: "KilnPostgres",
            dependencies: ["KilnCore", "KilnStore",
                           .product(name: "PostgresNIO", package: "postgres-nio"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        // The isolation backends: process, sandbox (bubblewrap), gvisor (runsc), isolate (Node).
        .target(
            name: "KilnBackends",
            dependencies: [
                "KilnCore", "KilnLogs", "KilnProcess",
                .product(name: "Logging", package: "swift-log"),
            ],
            // The Node isolate host, compiled into the binary (PackageResources.host_mjs);
            // its own tests (host-test.mjs) are run by `make test` with node.
            exclude: ["isolate/host-test.mjs"],
            resources: [.embedInCode("isolate/host.mjs")]
        ),
        // Admission, lanes, lifecycle and log ingest of workloads.
        .target(
            name: "KilnEngine",
            dependencies: [
                "KilnCore", "KilnStore", "KilnLogs", "KilnBackends",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // Routes, middleware (CORS, errors, auth), handlers, SSE, configuration.
        .target(
            name: "KilnAPI",
            dependencies: [
                "KilnCore", "KilnStore", "KilnEngine", "KilnLogs", "KilnBackends", "KilnHTTP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "kiln",
            dependencies: [
                "KilnCore", "KilnStore", "KilnEngine", "KilnAPI", "KilnHTTP", "KilnProcess", "KilnBackends", "KilnLogs",
                "KilnPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // Built with it, so `swift build --product kiln` puts kiln-init beside kiln.
                "kiln-init",
            ]
        ),
        // Request decoding and routing under a fuzzer, with an engine that runs nothing.
        .target(
            name: "KilnFuzzSupport",
            dependencies: [
                "KilnAPI", "KilnCore", "KilnEngine", "KilnStore", "KilnHTTP", "KilnLogs",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Declares libFuzzer's driver, which only `make fuzz` links (-sanitize=fuzzer).
        .systemLibrary(name: "CLibFuzzer", path: "CModules/CLibFuzzer"),
        .executableTarget(name: "KilnFuzz", dependencies: ["KilnFuzzSupport", "CLibFuzzer"]),
        .target(name: "KilnTestSupport", dependencies: ["KilnCore"], path: "Tests/KilnTestSupport"),
        .testTarget(name: "KilnCoreTests", dependencies: ["KilnCore", "KilnTestSupport"]),
        .testTarget(name: "KilnHTTPTests", dependencies: ["KilnHTTP", "KilnTestSupport"]),
        .testTarget(name: "KilnLogsTests", dependencies: ["KilnLogs", "KilnCore", "KilnTestSupport"]),
        .testTarget(name: "KilnStoreTests", dependencies: ["KilnStore", "KilnCore", "KilnTestSupport"]),
        .testTarget(name: "KilnPostgresTests", dependencies: ["KilnPostgres", "KilnStore", "KilnCore", "KilnTestSupport",
                                                              .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "KilnProcessTests", dependencies: ["KilnProcess", "KilnTestSupport", "kiln-init"]),
        .testTarget(name: "KilnEngineTests", dependencies: ["KilnEngine", "KilnBackends", "KilnLogs", "KilnStore", "KilnCore",
                                                            "KilnProcess", "KilnTestSupport", "kiln-init"]),
        // Depends on the executables so that `swift test` builds the binaries it runs (KILN_BIN overrides kiln).
        .testTarget(name: "KilnIntegrationTests", dependencies: ["KilnTestSupport", "KilnCore", "kiln", "kiln-init"]),
        .testTarget(name: "KilnAPITests", dependencies: ["KilnAPI", "KilnEngine", "KilnLogs", "KilnStore", "KilnBackends", "KilnHTTP",
                                                         "KilnTestSupport", "KilnFuzzSupport", "kiln-init",
                                                         .product(name: "Logging", package: "swift-log")]),
    ],
    swiftLanguageModes: [.v6]
)
