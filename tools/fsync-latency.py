#!/usr/bin/env python3
"""Latency of a small write + fdatasync on this disk, the floor under every acknowledged change.

    tools/fsync-latency.py [--dir data] [--count 500] [--size 128]

Appends `size` bytes to a scratch file in `dir` (put it on the same file system as the nodes'
data) and calls fdatasync after each, `count` times; prints the median, p90, p99 and max. Run
it beside counter-bench (tools/bench-suite.sh does) so both figures come from the same
conditions. The scratch file is removed at the end.
"""
import argparse, os, statistics, time

p = argparse.ArgumentParser()
p.add_argument("--dir", default="data")
p.add_argument("--count", type=int, default=500)
p.add_argument("--size", type=int, default=128)
a = p.parse_args()

os.makedirs(a.dir, exist_ok=True)
path = os.path.join(a.dir, f".fsync-latency-{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
payload = b"x" * a.size
samples = []
try:
    for _ in range(a.count):
        t = time.perf_counter()
        os.write(fd, payload)
        os.fdatasync(fd)
        samples.append((time.perf_counter() - t) * 1000)
finally:
    os.close(fd)
    os.unlink(path)
samples.sort()
q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))]
print(f"fdatasync of {a.size}-byte appends in {a.dir}: median {statistics.median(samples):.3f} ms, "
      f"p90 {q(0.90):.3f} ms, p99 {q(0.99):.3f} ms, max {samples[-1]:.3f} ms ({a.count} samples)")
