#!/usr/bin/env python3
"""Writes benchmarks/RESULTS.md from the JSON that `kiln-bench run` and
`kiln-bench reliability` leave in benchmarks/results/.

    python3 benchmarks/render_results.py [--bench results/latest.json]
        [--reliability results/reliability.json] [--out RESULTS.md] [--notes notes.md]

Every figure with a target says whether it met it and, when it did not, by how much.
`make bench` runs everything and then this script. Standard library only.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def git(*args):
    try:
        return subprocess.check_output(["git", "-C", HERE, *args], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def number(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, (int, float)):
        return str(v)
    if v != v:  # NaN
        return "n/a"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def target_text(t):
    if not t:
        return ""
    if "at_most" in t:
        return f"≤ {number(t['at_most'])}"
    if "at_least" in t:
        return f"≥ {number(t['at_least'])}"
    if "equals" in t:
        return f"= {number(t['equals'])}"
    if "kiln_ahead" in t:
        return f"Kiln ahead ({t['kiln_ahead']})"
    return json.dumps(t)


def miss_text(m):
    """How far a missed target is: `+N unit (x times the target)` or the ratio against the peer."""
    t = m.get("target") or {}
    v = m.get("value")
    if m.get("met", True) or not isinstance(v, (int, float)):
        return ""
    unit = m.get("unit", "")
    if "at_most" in t and t["at_most"]:
        goal = t["at_most"]
        return f"over by {number(v - goal)} {unit} ({v / goal:.2f}× the target)"
    if "at_least" in t and t["at_least"]:
        goal = t["at_least"]
        return f"short by {number(goal - v)} {unit} ({v / goal:.0%} of the target)"
    if "equals" in t:
        return f"off by {number(v - t['equals'])} {unit}"
    if "kiln_ahead" in t:
        ratio = m.get("ratio_kiln_to_peer")
        return f"peer ahead (Kiln/peer {ratio})" if ratio is not None else "peer ahead"
    return "missed"


def met_text(m):
    if not m.get("target"):
        return ""
    return "yes" if m.get("met") else "**NO**"


def cell(text):
    return str(text).replace("|", "\\|")


def phase_rows(details):
    """`/healthz` by phase of B2 (connect, hold, end), from the case's details."""
    phases = details.get("healthz_by_phase") if isinstance(details, dict) else None
    if not phases:
        return []
    return [(f"/healthz p99 while {name}", p.get("p99_ms"))
            for name, p in (("connecting", phases.get("connect", {})), ("holding", phases.get("hold", {})),
                            ("ending", phases.get("end", {})))]


def table(cases, peer=False):
    out = []
    if peer:
        out.append("| benchmark | case | figure | Kiln | peer | Kiln/peer | target | met | miss |")
        out.append("|---|---|---|---:|---:|---:|---|---|---|")
    else:
        out.append("| benchmark | case | figure | value | unit | target | met | miss |")
        out.append("|---|---|---|---:|---|---|---|---|")
    for c in cases:
        first = True
        if c.get("error"):
            cols = 9 if peer else 8
            row = [c["benchmark"], c["case"], f"error: {c['error']}"] + [""] * (cols - 3)
            out.append("| " + " | ".join(row) + " |")
            continue
        metrics = list(c.get("metrics", []))
        details = c.get("details", {})
        if peer and isinstance(details.get("kiln"), dict):
            kiln_rows = dict(phase_rows(details["kiln"].get("details", {})))
            peer_rows = dict(phase_rows((details.get("peer") or {}).get("details", {})))
            metrics += [{"name": n, "value": v, "unit": "ms", "peer_value": peer_rows.get(n)}
                        for n, v in kiln_rows.items()]
        else:
            metrics += [{"name": n, "value": v, "unit": "ms"} for n, v in phase_rows(details)]
        for m in metrics:
            name = cell(m["name"])
            lead = [c["benchmark"], c["case"]] if first else ["", ""]
            first = False
            if peer and "peer_value" in m:
                ratio = m.get("ratio_kiln_to_peer")
                if ratio is None and isinstance(m.get("peer_value"), (int, float)) and m["peer_value"]:
                    ratio = round(m["value"] / m["peer_value"], 3)
                out.append("| " + " | ".join(lead + [
                    f"{name} ({m.get('unit', '')})", number(m["value"]),
                    number(m["peer_value"]) if m["peer_value"] is not None else "",
                    number(ratio) if ratio is not None else "", target_text(m.get("target")), met_text(m),
                    miss_text(m)]) + " |")
            elif peer:
                out.append("| " + " | ".join(lead + [
                    f"{name} ({m.get('unit', '')})", number(m["value"]), "", "",
                    target_text(m.get("target")), met_text(m), miss_text(m)]) + " |")
            else:
                out.append("| " + " | ".join(lead + [
                    name, number(m["value"]), m.get("unit", ""), target_text(m.get("target")),
                    met_text(m), miss_text(m)]) + " |")
    return "\n".join(out)


def machine_line(doc):
    m = doc.get("machine", {})
    parts = [f"{m.get('cores', '?')} cores", f"{m.get('memory_gib', '?')} GiB"]
    if m.get("kernel"):
        parts.append(f"kernel {m['kernel']}")
    parts.append(f"load average before {m.get('loadavg_before', '?')}, after {m.get('loadavg_after', '?')}")
    return ", ".join(parts)


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--reliability", default=os.path.join(HERE, "results", "reliability.json"))
    ap.add_argument("--limits", default=os.path.join(HERE, "results", "b6.json"),
                    help="B6 from a run of its own (`kiln-bench run b6 --out results/b6.json`), used when --bench has no B6")
    ap.add_argument("--notes", default=os.path.join(HERE, "results-notes.md"),
                    help="hand-written analysis appended as is (what limits each missed target)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()

    bench = load(args.bench)
    rel = load(args.reliability)
    limits_doc = load(args.limits)
    if bench is None and rel is None:
        sys.exit(f"no results: run `make bench` first ({args.bench}, {args.reliability})")

    commit = git("rev-parse", "--short", "HEAD")
    # Changes to what the binaries are built from (results files don't count).
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "../Package.swift", "../Sources", "../CModules",
                "Package.swift", "Sources", "peers")
    lines = [
        "# Kiln benchmark and reliability results",
        "",
        "Generated by `make bench` (`benchmarks/render_results.py`); do not edit by hand. "
        "The method is in [README.md](README.md); the issue's targets are in the *target* column.",
        "",
        f"- Rendered {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
        f"at commit `{commit}`{' (with uncommitted changes to the sources)' if dirty and dirty != 'unknown' else ''}.",
    ]
    if bench:
        lines.append(f"- Benchmarks run {bench.get('started_at', '?')} → {bench.get('finished_at', '?')}"
                     f"{' (quick sizes)' if bench.get('quick') else ''}: {machine_line(bench)}.")
    if rel:
        lines.append(f"- Reliability run {rel.get('started_at', '?')} → {rel.get('finished_at', '?')}"
                     f"{' (quick sizes)' if rel.get('quick') else ''}: "
                     f"{'all checks passed' if rel.get('passed') else '**a check failed**'}.")
    lines.append("- This machine is shared by the server, the load generator and the workloads (2 cores): "
                 "figures are noisy; B5 puts a peer through the same run for ratios.")
    lines.append("")

    if bench:
        own = [c for c in bench.get("cases", []) if c.get("benchmark") not in ("B5", "B6")]
        peer = [c for c in bench.get("cases", []) if c.get("benchmark") == "B5"]
        limits = [c for c in bench.get("cases", []) if c.get("benchmark") == "B6"]
        limits_note = ""
        if not limits and limits_doc:
            limits = [c for c in limits_doc.get("cases", []) if c.get("benchmark") == "B6"]
            limits_note = (f"Run on its own, {limits_doc.get('started_at', '?')} → {limits_doc.get('finished_at', '?')}"
                           f"{' (quick sizes)' if limits_doc.get('quick') else ''}: {machine_line(limits_doc)}.")
        missed = [f"{c['benchmark']} {c['case']}: {m['name']}"
                  for c in own + peer + limits for m in c.get("metrics", []) if m.get("target") and not m.get("met")]
        lines += ["## Benchmarks B1–B4", "", table(own), ""]
        if peer:
            lines += ["## B5: Kiln against a Hummingbird 2 peer (same run)", "", table(peer, peer=True), ""]
        if limits:
            lines += ["## B6: limits under a flood, retention, history at scale", ""]
            if limits_note:
                lines += [limits_note, ""]
            lines += [table(limits), ""]
        lines += ["### Targets missed", ""]
        lines += [f"- {x}" for x in missed] or ["- none"]
        lines.append("")
    if rel:
        lines += ["## Reliability R1–R4", "", table(rel.get("cases", [])), ""]
    if os.path.exists(args.notes):
        with open(args.notes) as f:
            lines += [f.read().rstrip(), ""]

    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
