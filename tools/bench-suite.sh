#!/usr/bin/env bash
# The W1-W6 workloads of BENCHMARKS.md, against a fresh local cluster, everything on this
# machine: 3 counter-nodes (R=3, fsync on), a router, counter-bench, and an fdatasync probe.
#
#   tools/bench-suite.sh [--secs 20] [--runs 3] [--only W1,W3] [--out DIR] [--keep] [--bin DIR]
#                        [--metrics] [--syscalls] [--direct] [--w6-keys N]
#
# W6 (not in the default set: its fill takes 10-25 minutes here) first fills N keys (default
# 10^7; --w6-keys for a smaller try) with one increment each (256 clients, not read back: the
# runs read back what they touch), then runs 64 clients uniform over them. Only the first W6
# run is verified (it knows every key started at 1; later runs would find earlier runs' counts).
# --metrics: the nodes and the router serve Prometheus metrics (--metrics-listen on
# 127.0.0.1:9201-9203 and :9200), scraped once per run into DIR (to measure their overhead).
# RUST_LOG is passed on (e.g. RUST_LOG=warn: no per-request spans are created).
# --syscalls: also count every server's system calls per op (counter-bench --syscalls: one
# `perf stat` per process over the measured window). Every run reports the servers' CPU and
# context switches per op, and the TCP segments sent per op on this host.
# --direct: counter-bench sends each op straight to a replica of its key (one hop less).
# --bin DIR: take counter-node and counter-router from DIR instead of building them (to
# compare two builds in one session), and counter-bench too when DIR has it (a build of
# another protocol version needs its own; an older counter-bench may not count syscalls, and
# then --syscalls is left out).
# Builds the release binaries, starts the cluster on 127.0.0.1:7201-7203 (router :7200) with
# data in DIR/data (default bench-results/<timestamp>), then for each workload and run: the
# fdatasync probe (tools/fsync-latency.py, on the data's file system), counter-bench --json,
# and the nodes' RSS. Prints one line per run and the medians; keeps every JSON in DIR.
# Stops what it started (by PID) on exit; --keep leaves the data dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-lib.sh
SECS=20 RUNS=3 ONLY=W1,W2,W3,W4,W5 KEEP=0 NODE_BIN= METRICS=0 SYSCALLS=() DIRECT=()
OUT=bench-results/$(date -u +%Y%m%dT%H%M%SZ)
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --bin) NODE_BIN=$(cd "$2" && pwd); shift 2 ;;
    --metrics) METRICS=1; shift ;;
    --syscalls) SYSCALLS=(--syscalls); shift ;;
    --direct) DIRECT=(--direct); shift ;;
    --w6-keys) W6_KEYS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=$PWD/target/release
if [ -z "${NODE_BIN:-}" ]; then
  cargo build --release --quiet -p counter -p counter-bench
  NODE_BIN=$BIN
else
  cargo build --release --quiet -p counter-bench
  if [ -x "$NODE_BIN/counter-bench" ]; then BIN=$NODE_BIN; fi
fi
if [ ${#SYSCALLS[@]} -gt 0 ] && ! "$BIN/counter-bench" --help | grep -q -- --syscalls; then
  echo "note: $BIN/counter-bench cannot count syscalls; --syscalls left out"
  SYSCALLS=()
fi
mkdir -p "$OUT/data"
DATA=$(cd "$OUT/data" && pwd)
ROUTER=127.0.0.1:7200
PIDS=()
cleanup() {
  stop_started
  if [ "$KEEP" = 0 ]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT

cat > "$DATA/cluster.toml" <<TOML
replication = 3
shards = 64
[[node]]
id = 1
addr = "127.0.0.1:7201"
[[node]]
id = 2
addr = "127.0.0.1:7202"
[[node]]
id = 3
addr = "127.0.0.1:7203"
TOML
NODE_PIDS=()
metrics_args() {
  if [ "$METRICS" = 1 ]; then echo "--metrics-listen 127.0.0.1:920$1"; fi
}
for id in 1 2 3; do
  # shellcheck disable=SC2046
  "$NODE_BIN/counter-node" --id "$id" --cluster "$DATA/cluster.toml" --data-dir "$DATA/node-$id" \
    $(metrics_args "$id") >>"$DATA/node-$id.log" 2>&1 &
  PIDS+=($!); NODE_PIDS+=($!)
done
# shellcheck disable=SC2046
"$NODE_BIN/counter-router" --cluster "$DATA/cluster.toml" --listen "$ROUTER" $(metrics_args 0) \
  >>"$DATA/router.log" 2>&1 &
PIDS+=($!)
# CPU per op of every server process, in every report (counter-bench --cpu).
CPU_ARGS=(--cpu "router=$!")
for i in 0 1 2; do CPU_ARGS+=(--cpu "node$((i + 1))=${NODE_PIDS[$i]}"); done
# Ready once one increment goes through (with the counter-bench of the build measured).
for _ in $(seq 100); do
  "$BIN/counter-bench" --router "$ROUTER" --clients 1 --keys 1 --ops 1 --timeout-ms 500 \
    --key-prefix ready- --no-verify >/dev/null 2>&1 && break
  sleep 0.1
done

rss_mib() {
  local total=0
  for pid in "${NODE_PIDS[@]}"; do
    kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    total=$((total + kb))
  done
  echo $((total / 1024 / 3))
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); results in $OUT"
# W6's fill: every key once, in order, then the node RSS and data size it left. Fails (W6 is
# then skipped) unless every increment was acknowledged: run 1 checks every key started at 1.
fill_w6() {
  local start
  start=$(date +%s)
  "$BIN/counter-bench" --router "$ROUTER" --clients 256 --keys "$W6_KEYS" --distribution sequential \
    --ops "$W6_KEYS" --warmup 0s --key-prefix "$W6_PREFIX" --no-verify --json "${CPU_ARGS[@]}" \
    >"$OUT/W6-fill.json" 2>"$OUT/W6-fill.err" || {
      echo "W6 fill failed (see $OUT/W6-fill.err); W6 skipped"; rm -f "$OUT/W6-fill.json"; return 1; }
  echo "W6 fill: $W6_KEYS keys in $(($(date +%s) - start)) s: $(python3 tools/bench-summary.py "$OUT/W6-fill.json") | node RSS $(rss_mib) MiB avg | data $(du -sh "$DATA" | cut -f1)"
  python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))["counts"]; sys.exit(0 if c["ok"] == int(sys.argv[2]) else 1)' \
    "$OUT/W6-fill.json" "$W6_KEYS" || {
      echo "W6 fill: not every increment was acknowledged, so no key's start is known; W6 skipped"; return 1; }
}
# Run 1 of W6 checks its keys from 1 (--base), if this counter-bench knows the flag.
W6_CHECK=(--base 1)
if ! "$BIN/counter-bench" --help | grep -q -- --base; then
  W6_CHECK=(--no-verify)
fi

for w in ${ONLY//,/ }; do
  extra=()
  if [ "$w" = W6 ] && ! fill_w6; then continue; fi
  for run in $(seq "$RUNS"); do
    if [ "$w" = W6 ]; then
      if [ "$run" = 1 ]; then extra=("${W6_CHECK[@]}"); else extra=(--no-verify); fi
    fi
    fsync=$(python3 tools/fsync-latency.py --dir "$DATA" --count 300)
    # shellcheck disable=SC2046
    "$BIN/counter-bench" --router "$ROUTER" $(args_of "$w") "${CPU_ARGS[@]}" ${SYSCALLS[@]+"${SYSCALLS[@]}"} ${DIRECT[@]+"${DIRECT[@]}"} ${extra[@]+"${extra[@]}"} --duration "${SECS}s" --warmup 2s \
      --json >"$OUT/$w-run$run.json" 2>"$OUT/$w-run$run.err" || {
        echo "$w run $run: counter-bench failed (see $OUT/$w-run$run.err)"; rm -f "$OUT/$w-run$run.json"; continue; }
    echo "$w run $run: $(python3 tools/bench-summary.py "$OUT/$w-run$run.json") | node RSS $(rss_mib) MiB avg | $fsync"
    if [ "$METRICS" = 1 ]; then
      for id in 0 1 2 3; do
        python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
          "http://127.0.0.1:920$id/metrics" >"$OUT/$w-run$run.metrics-$id.txt" || true
      done
    fi
  done
done
python3 tools/bench-summary.py --medians "$OUT"
