// swift-tools-version:6.0
// kiln-peer: a minimal Hummingbird 2 server with the endpoints benchmark B5 needs (the same
// ones B1 and B2 use against Kiln, plus /healthz) and the same in-memory broker semantics,
// so that kiln-bench can run Kiln and a conventional Swift server side by side.
// The folder is not called `hummingbird`: SwiftPM names a root package after its folder, and
// one named like its dependency hummingbird-project/hummingbird cannot resolve it.
import PackageDescription

let package = Package(
    name: "KilnPeer",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kiln-peer", targets: ["KilnPeer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .executableTarget(
            name: "KilnPeer",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
