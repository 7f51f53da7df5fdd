import Foundation
import KilnCore
import KilnEngine

/// Validates a submission body: 400 when it is not a JSON object, 422 naming the field
/// that is missing, of the wrong type or out of range.
struct SubmissionParser {
    var defaultTimeoutS: Int
    var maxTimeoutS: Int
    var maxMemMB: Int
    var maxCPUs: Int
    var maxPids: Int
    var maxDiskMB: Int
    static let defaultMemMB = 256

    init(_ config: ServerConfig) {
        defaultTimeoutS = config.defaultTimeoutS
        maxTimeoutS = config.maxTimeoutS
        maxMemMB = config.maxMemMB
        maxCPUs = config.maxCPUs
        maxPids = config.maxPids
        maxDiskMB = config.maxDiskMB
    }

    func parse(_ body: [UInt8]) throws -> SubmitRequest {
        guard !body.isEmpty else { throw APIError(400, "invalid_json", "the request body is empty; expected a JSON object") }
        guard String(validating: body, as: UTF8.self) != nil else {
            throw APIError(400, "invalid_json", "the request body is not valid UTF-8")
        }
        let value: JSON
        do {
            value = try JSON.parse(body)
        } catch {
            throw APIError(400, "invalid_json", "the request body is not valid JSON: \(error)")
        }
        guard case .object = value else {
            throw APIError(400, "invalid_json", "the request body must be a JSON object, not \(value.typeName)")
        }
        let runtime: Runtime = try enumField(value, "runtime", required: true) ?? .shell
        guard let codeValue = value["code"], !codeValue.isNull else { throw APIError.invalid("code", "code is required") }
        guard let code = codeValue.stringValue else { throw APIError.invalid("code", "code must be a string, not \(codeValue.typeName)") }
        guard !code.isEmpty else { throw APIError.invalid("code", "code must not be empty") }
        let isolation: Isolation = try enumField(value, "isolation", required: false) ?? .auto
        let input = value["input"] ?? .null

        var resources = Resources(cpus: 1, memMB: SubmissionParser.defaultMemMB, timeoutS: defaultTimeoutS)
        if let r = value["resources"], !r.isNull {
            guard case .object = r else { throw APIError.invalid("resources", "resources must be an object, not \(r.typeName)") }
            resources.cpus = try intField(r, "cpus", prefix: "resources.", range: 1...maxCPUs, cap: "KILN_MAX_CPUS") ?? resources.cpus
            resources.memMB = try intField(r, "mem_mb", prefix: "resources.", range: 16...maxMemMB, cap: "KILN_MAX_MEM_MB") ?? resources.memMB
            resources.timeoutS = try intField(r, "timeout_s", prefix: "resources.", range: 1...maxTimeoutS, cap: "KILN_MAX_TIMEOUT_S") ?? resources.timeoutS
            resources.pids = try intField(r, "pids", prefix: "resources.", range: 8...maxPids, cap: "KILN_MAX_PIDS") ?? resources.pids
            resources.diskMB = try intField(r, "disk_mb", prefix: "resources.", range: 1...maxDiskMB, cap: "KILN_MAX_DISK_MB") ?? resources.diskMB
        }

        var env: [String: String] = [:]
        if let e = value["env"], !e.isNull {
            guard case .object(let members) = e else { throw APIError.invalid("env", "env must be an object of strings, not \(e.typeName)") }
            for (k, v) in members {
                guard let s = v.stringValue else { throw APIError.invalid("env", "env.\(k) must be a string, not \(v.typeName)") }
                guard !k.isEmpty, !k.contains("="), !k.contains("\0") else {
                    throw APIError.invalid("env", "env names must be non-empty, without '=' or NUL")
                }
                guard !s.contains("\0") else { throw APIError.invalid("env", "env.\(k) must not contain NUL") }
                env[k] = s
            }
        }
        return SubmitRequest(runtime: runtime, code: code, inputJSON: input.text, isolation: isolation, resources: resources, env: env)
    }

    private func enumField<E: RawRepresentable & CaseIterable>(_ obj: JSON, _ name: String, required: Bool) throws -> E? where E.RawValue == String {
        guard let v = obj[name], !v.isNull else {
            if required { throw APIError.invalid(name, "\(name) is required") }
            return nil
        }
        let allowed = E.allCases.map(\.rawValue).joined(separator: ", ")
        guard let s = v.stringValue else { throw APIError.invalid(name, "\(name) must be a string (one of \(allowed)), not \(v.typeName)") }
        guard let e = E(rawValue: s) else { throw APIError.invalid(name, "\(name) must be one of \(allowed)") }
        return e
    }

    /// `cap`: the setting that sets the range's top, named in the refusal.
    private func intField(_ obj: JSON, _ name: String, prefix: String, range: ClosedRange<Int>, cap: String) throws -> Int? {
        guard let v = obj[name], !v.isNull else { return nil }
        let field = prefix + name
        guard let n = v.int64Value else { throw APIError.invalid(field, "\(field) must be a whole number, not \(v.typeName == "number" ? "a fraction or out of range" : v.typeName)") }
        guard n >= Int64(range.lowerBound), n <= Int64(range.upperBound) else {
            throw APIError.invalid(field, "\(field) must be from \(range.lowerBound) to \(range.upperBound) (the server's cap, \(cap))")
        }
        return Int(n)
    }
}
