#!/usr/bin/env python3
"""Cold start per backend: p50 of a trivial workload end to end (synchronous POST until
the 200 answer) over N runs, next to the raw cost of starting the same runtime directly.

Usage: benchmarks/coldstart.py [--server http://127.0.0.1:8080] [--runs 50] [--token T]
Start the server first (make run, or .build/release/kiln serve). A benchmark, not a test:
it prints figures and asserts nothing.
"""
import argparse
import http.client
import json
import statistics
import subprocess
import time
import urllib.parse

TRIVIAL = {
    "python": "pass",
    "node": "0",
    "shell": ":",
}
RAW = {
    "python": ["/usr/bin/python3", "-c", "pass"],
    "node": ["/usr/bin/node", "-e", "0"],
    "shell": ["/bin/sh", "-c", ":"],
}


def p50(samples):
    return statistics.median(samples) if samples else float("nan")


def raw_ms(cmd, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def post_ms(conn, headers, body, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        conn.request("POST", "/v1/workloads", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        out.append((time.perf_counter() - t) * 1000)
        rec = json.loads(data)
        if r.status != 200 or rec.get("status") != "completed":
            raise SystemExit(f"workload failed: {r.status} {data[:300]!r}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--token")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.server)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=120)
    headers = {"Content-Type": "application/json"}
    if a.token:
        headers["Authorization"] = f"Bearer {a.token}"
    conn.request("GET", "/v1/backends", headers=headers)
    backends = {b["name"]: b for b in json.loads(conn.getresponse().read())["backends"]}

    raw = {rt: p50(raw_ms(cmd, a.runs)) for rt, cmd in RAW.items()}
    rows = []
    for name in ["process", "sandbox", "gvisor", "isolate"]:
        b = backends.get(name)
        if not b or not b["available"]:
            rows.append((name, "-", "skipped", (b or {}).get("reason", "not listed"), "-"))
            continue
        if b.get("allowed") is False:
            # process is off unless the server lists it: `make run ARGS="--isolation process,sandbox,gvisor,isolate"`.
            rows.append((name, "-", "skipped", "not allowed by KILN_ISOLATION", "-"))
            continue
        for rt in b["runtimes"]:
            code = "export default () => 0" if name == "isolate" else TRIVIAL[rt]
            body = json.dumps({"runtime": rt, "code": code, "isolation": name})
            post_ms(conn, headers, body, 3)  # warm up
            ms = p50(post_ms(conn, headers, body, a.runs))
            rows.append((name, rt, f"{ms:.1f}", f"{raw[rt]:.1f}", f"{ms / raw[rt]:.1f}x"))

    print(f"Cold start, p50 of {a.runs} synchronous runs (ms), against starting the runtime directly")
    print(f"{'backend':<9} {'runtime':<8} {'kiln p50':>9} {'raw p50':>8} {'ratio':>7}")
    for r in rows:
        print(f"{r[0]:<9} {r[1]:<8} {r[2]:>9} {r[3]:>8} {r[4]:>7}")
    print("raw: " + ", ".join(f"{' '.join(RAW[rt])} {raw[rt]:.1f} ms" for rt in RAW))


if __name__ == "__main__":
    main()
