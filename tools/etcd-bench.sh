#!/usr/bin/env bash
# The ratio to etcd, re-measured in one run on this machine: starts a 3-member etcd (Debian's
# etcd-server package, installed if missing; every member fsyncs its WAL, as etcd does by
# default), runs counter-bench's workloads against it (--etcd: increments are compare-and-swap
# transactions, the way etcd's own clients increment), then the same workloads against a fresh
# local cluster of ours (tools/bench-suite.sh), and prints both tables.
#
#   tools/etcd-bench.sh [--secs 10] [--runs 2] [--only W1,W3,W4] [--out DIR] [--no-ours]
#
# etcd listens on 127.0.0.1:23791-23793 (peers :23801-23803), with its data in DIR/etcd-data
# (removed at the end); every process it started is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-lib.sh
SECS=10 RUNS=2 ONLY=W1,W3,W4 OURS=1
OUT=bench-results/etcd-$(date -u +%Y%m%dT%H%M%SZ)
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-ours) OURS=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case ",$ONLY," in
  *,W6,*) echo "W6 needs a fill of 10^7 keys first: run it with tools/bench-suite.sh --only W6" >&2; exit 2 ;;
esac
if ! command -v etcd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  # The package enables a single-member service of its own; it is not the one measured here.
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
cargo build --release --quiet -p counter-bench
BIN=$PWD/target/release
mkdir -p "$OUT/etcd/data"
DATA=$(cd "$OUT/etcd/data" && pwd)
PIDS=()
cleanup() {
  stop_started
  rm -rf "$DATA"
}
trap cleanup EXIT

CLUSTER=e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803
ETCD_ARGS=()
CPU_ARGS=()
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$DATA/e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token counter-bench \
    >"$DATA/e$i.log" 2>&1 &
  PIDS+=($!)
  ETCD_ARGS+=(--etcd "http://127.0.0.1:2379$i")
  CPU_ARGS+=(--cpu "etcd$i=$!")
done
healthy() {
  python3 -c 'import sys, urllib.request; sys.exit(0 if b"true" in urllib.request.urlopen(sys.argv[1], timeout=1).read() else 1)' \
    "http://127.0.0.1:2379$1/health" 2>/dev/null
}
for _ in $(seq 100); do healthy 1 && healthy 2 && healthy 3 && break; sleep 0.2; done
healthy 1 || { echo "etcd did not become healthy; see $DATA/e1.log" >&2; exit 1; }

echo "etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members; results in $OUT/etcd"
for w in ${ONLY//,/ }; do
  for run in $(seq "$RUNS"); do
    # shellcheck disable=SC2046
    "$BIN/counter-bench" "${ETCD_ARGS[@]}" $(args_of "$w") "${CPU_ARGS[@]}" --duration "${SECS}s" \
      --warmup 2s --json >"$OUT/etcd/$w-run$run.json" 2>"$OUT/etcd/$w-run$run.err" || {
        echo "etcd $w run $run: counter-bench failed (see $OUT/etcd/$w-run$run.err)"; continue; }
    echo "etcd $w run $run: $(python3 tools/bench-summary.py "$OUT/etcd/$w-run$run.json")"
  done
done
ETCD_TABLE=$(python3 tools/bench-summary.py --medians "$OUT/etcd")
cleanup
PIDS=()
trap - EXIT
if [ "$OURS" = 1 ]; then
  tools/bench-suite.sh --only "$ONLY" --secs "$SECS" --runs "$RUNS" --out "$OUT/ours"
fi
echo
echo "etcd (3 members):"
echo "$ETCD_TABLE"
