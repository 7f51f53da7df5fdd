import Foundation
import KilnFuzzSupport

// The fuzz target of `make fuzz`: built with `-sanitize=fuzzer,address -DKILN_FUZZ`,
// libFuzzer provides `main` and calls `LLVMFuzzerTestOneInput` with each input. A broken
// invariant is a crash, which libFuzzer saves as an artifact. See FuzzHarness for the
// input format and the invariants.
//
// Built plainly (`swift build`), it replays inputs instead, without libFuzzer:
// `kiln-fuzz FILE_OR_FOLDER...` runs each file through the same checks (a crash found by
// `make fuzz` is replayed this way) and exits 1 if any breaks an invariant.

#if KILN_FUZZ
import CLibFuzzer

@_cdecl("LLVMFuzzerTestOneInput")
public func kilnFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let problem = FuzzHarness.shared.check(input) {
        fatalError("invariant broken: \(problem)")
    }
    return 0
}

@main
struct KilnFuzzMain {
    // SwiftPM links an executable's `main` to this entry point, so libFuzzer's own `main`
    // is not used: hand the command line to its driver instead.
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in kilnFuzzOne(data, size) })
    }
}
#else
@main
struct KilnFuzzReplay {
    static func main() {
        var files: [String] = []
        var verbose = false
        for arg in CommandLine.arguments.dropFirst() {
            if arg == "-v" { verbose = true; continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: arg, isDirectory: &isDir) else {
                FileHandle.standardError.write(Data("kiln-fuzz: no such file: \(arg)\n".utf8))
                exit(2)
            }
            if isDir.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: arg)) ?? []
                files += names.sorted().map { arg + "/" + $0 }
            } else {
                files.append(arg)
            }
        }
        if files.isEmpty {
            print("usage: kiln-fuzz [-v] FILE_OR_FOLDER... (replays inputs; `make fuzz` builds the libFuzzer target)")
            exit(2)
        }
        var failed = 0
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            if let problem = FuzzHarness.shared.check(Array(data)) {
                print("FAIL \(file): \(problem)")
                failed += 1
            } else if verbose {
                print("ok   \(file): \(FuzzHarness.shared.lastAnswer)")
            }
        }
        print("\(files.count - failed)/\(files.count) inputs keep every invariant")
        exit(failed == 0 ? 0 : 1)
    }
}
#endif
