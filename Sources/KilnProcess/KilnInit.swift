internal import CKilnSys
import Foundation
import Glibc

/// Where the `kiln-init` program is: the first process of every workload
/// (CModules/KilnInit/main.c). It is built and installed beside the `kiln` binary (and
/// beside the test binaries in the build folder), or in `../libexec/kiln/` from it.
///
/// Without it (or under ThreadSanitizer) a workload is spawned the older way: a fork of
/// the server that is the PID namespace's init itself. That copies the server's page
/// tables on every start, and the server then pays copy-on-write faults for as long as
/// the workload runs, so the server says so in `/v1/backends`.
public enum KilnInit {
    public static let path: String? = {
        guard kiln_can_spawn_through_init() != 0 else { return nil }
        let own = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let folder = (own as NSString).deletingLastPathComponent
        return [folder + "/kiln-init", folder + "/../libexec/kiln/kiln-init"].first { access($0, X_OK) == 0 }
    }()

    /// For `/v1/backends`: how each workload's first process is started.
    public static var summary: String {
        path.map { "kiln-init (\($0)), started without copying the server" } ?? "a fork of the server (kiln-init not found)"
    }
}
