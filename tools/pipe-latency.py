#!/usr/bin/env python3
"""Latency of sequential commands through one counter-cli in pipe mode.

    tools/pipe-latency.py [--router 127.0.0.1:7100] [--count 200] [--key latency] [--cmd incr]

Sends one command, waits for its answer line, sends the next; prints the median, p90, p99 and
max of the per-command round trip (client process -> router -> coordinator -> replicas, fsync
on a majority, and back).
"""
import argparse, os, subprocess, statistics, time

p = argparse.ArgumentParser()
p.add_argument("--router", default="127.0.0.1:7100")
p.add_argument("--count", type=int, default=200)
p.add_argument("--key", default="latency")
p.add_argument("--cmd", default="incr")
p.add_argument("--cli", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "counter-cli"))
a = p.parse_args()

cli = subprocess.Popen([a.cli, "--router", a.router], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
samples, errors = [], 0
for i in range(a.count):
    t = time.perf_counter()
    cli.stdin.write(f"{a.cmd} {a.key}\n")
    cli.stdin.flush()
    line = cli.stdout.readline()
    samples.append((time.perf_counter() - t) * 1000)
    if line.startswith("ERR"):
        errors += 1
cli.stdin.close()
cli.wait()
samples.sort()
q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))]
print(f"{a.count} sequential `{a.cmd}` in pipe mode: median {statistics.median(samples):.3f} ms, "
      f"p90 {q(0.90):.3f} ms, p99 {q(0.99):.3f} ms, max {samples[-1]:.3f} ms, errors {errors}")
