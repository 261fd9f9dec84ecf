#!/usr/bin/env python3
"""Summaries of counter-bench --json reports (used by tools/bench-suite.sh).

    tools/bench-summary.py REPORT.json          one line: throughput, latency, counts, verify
    tools/bench-summary.py --medians DIR        per workload (W1-run1.json, W1-run2.json, ...):
                                                the median run by throughput, as a table row
"""
import glob, json, os, re, statistics, sys


def servers_cpu(r):
    """Microseconds of server CPU (every --cpu process but counter-bench) per op, or None."""
    cpu = [c for c in r.get("cpu", []) if c["name"] != "bench"]
    return sum(c["us_per_op"] for c in cpu) if cpu else None


def servers_sum(r, field):
    """The servers' total of a per-op figure of counter-bench's cpu list, or None."""
    xs = [c.get(field) for c in r.get("cpu", []) if c["name"] != "bench"]
    return sum(xs) if xs and all(x is not None for x in xs) else None


def per_op(r):
    """Servers' context switches and syscalls per op, and TCP segments per op, where known."""
    parts = []
    for field, name in (("switches_per_op", "switches"), ("syscalls_per_op", "syscalls")):
        x = servers_sum(r, field)
        if x is not None:
            parts.append(f"{name} {x:.1f}/op")
    if r.get("tcp_segments_per_op") is not None:
        parts.append(f"tcp segs {r['tcp_segments_per_op']:.1f}/op")
    return parts


def line(r):
    lat, c, v = r["latency_ms"], r["counts"], r.get("verify")
    cpu = servers_cpu(r)
    cpu = "" if cpu is None else f" | server CPU {cpu:.1f} µs/op"
    extra = per_op(r)
    cpu += "" if not extra else " (" + ", ".join(extra) + ")"
    verify = "not verified" if v is None else (
        f"verify ok ({v['keys']} keys)" if v["failed"] == 0 else f"VERIFY FAILED ({v['failed']} keys)")
    return (f"{r['throughput']['ops_per_s']:.0f} ops/s, p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f}, "
            f"p99 {lat['p99']:.3f}, p99.9 {lat['p999']:.3f}, max {lat['max']:.3f} | ok {c['ok']}, "
            f"failed {r['failed']}, unknown {c['unknown']}, retries {r['retries']} | {verify}{cpu}")


if len(sys.argv) == 3 and sys.argv[1] == "--medians":
    runs = {}
    for path in sorted(glob.glob(os.path.join(sys.argv[2], "W*-run*.json"))):
        w = re.match(r"(W\d+)-run", os.path.basename(path)).group(1)
        try:
            with open(path) as f:
                runs.setdefault(w, []).append(json.load(f))
        except ValueError:
            print(f"skipped {path}: not a report", file=sys.stderr)
    print("| workload | runs | ops/s (median) | p50 ms | p99 ms | max ms | server CPU µs/op (median) | per op (median run) | unknown | verify |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w, rs in sorted(runs.items()):
        rs.sort(key=lambda r: r["throughput"]["ops_per_s"])
        m = rs[len(rs) // 2]
        tput = statistics.median(r["throughput"]["ops_per_s"] for r in rs)
        checked = [r["verify"] for r in rs if r.get("verify")]
        if any(v["failed"] for v in checked):
            verdict = "FAILED"
        elif len(checked) == len(rs):
            verdict = "ok"
        else:
            verdict = f"ok ({len(checked)} of {len(rs)} runs checked)" if checked else "not checked"
        cpus = [x for x in (servers_cpu(r) for r in rs) if x is not None]
        cpu = f"{statistics.median(cpus):.1f}" if cpus else "-"
        print(f"| {w} | {len(rs)} | {tput:.0f} | {m['latency_ms']['p50']:.3f} | {m['latency_ms']['p99']:.3f} | "
              f"{m['latency_ms']['max']:.3f} | {cpu} | {', '.join(per_op(m)) or '-'} | "
              f"{sum(r['counts']['unknown'] for r in rs)} | {verdict} |")
elif len(sys.argv) == 2:
    with open(sys.argv[1]) as f:
        print(line(json.load(f)))
else:
    sys.exit(__doc__)
