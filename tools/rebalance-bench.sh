#!/usr/bin/env bash
# Rebalancing figures (BENCHMARKS.md, "Rebalancing"): moving a shard onto a new node while a
# W3 load (64 clients, 10^4 keys, uniform increments) runs.
#
#   tools/rebalance-bench.sh [KEYS_PER_SHARD ...]     default: 100000
#   LOAD=0 tools/rebalance-bench.sh 1000000           the move alone (no W3 beside it)
#
# For each size, on loopback in a fresh temporary folder: a 3-node cluster (R = 3, 2 shards)
# and a router; a fill of every key of both shards (2 x KEYS_PER_SHARD keys, sequential
# increments); W3 for 10 s without a move; node 4 started with --join; then W3 in 5 s windows
# while `counter-cli cluster add-node 4` moves one shard (one replica of it) onto node 4. Prints
# the move's time (the command's line, and the node log's time per shard), and each W3
# window's ops/s, p99 and max latency (the max bounds how long any key's operation waited:
# the longest pause a key saw). Every process is stopped by PID at the end. Bounded: each
# bench run is bounded in time; the move by the admin command's --timeout-ms (1 h).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
cargo build --release --quiet -p counter -p counter-bench
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000)

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FORMAT=$(mktemp /tmp/rebalance-format.XXXXXX.py)
cat > "$FORMAT" <<'PY'
import json, sys
r = json.load(sys.stdin)
l = r["latency_ms"]
label = sys.argv[1]
print("%-22s %9.0f ops/s  p50 %.2f ms  p99 %.2f ms  max %.1f ms  failed %d"
      % (label, r["throughput"]["ops_per_s"], l["p50"], l["p99"], l["max"], r["failed"]))
PY
w3() { # $1 duration, $2 label
  "$BIN/counter-bench" --router "$ROUTER" --clients 64 --keys 10000 \
    --duration "$1" --json 2>>"$DIR/bench.err" | python3 "$FORMAT" "$2" || {
    echo "$2: counter-bench failed (see $DIR/bench.err): $(tail -3 "$DIR/bench.err")"
  }
}

for KEYS in "${SIZES[@]}"; do
  DIR=$(mktemp -d /tmp/rebalance.XXXXXX)
  ROUTER=127.0.0.1:$(port)
  ADDRS=(127.0.0.1:$(port) 127.0.0.1:$(port) 127.0.0.1:$(port) 127.0.0.1:$(port))
  {
    echo "replication = 3"
    echo "shards = 2"
    for i in 1 2 3; do printf '[[node]]\nid = %d\naddr = "%s"\n' "$i" "${ADDRS[$((i-1))]}"; done
  } > "$DIR/cluster.toml"
  for i in 1 2 3; do
    "$BIN/counter-node" --id "$i" --cluster "$DIR/cluster.toml" --data-dir "$DIR/node-$i" \
      > "$DIR/node-$i.log" 2>&1 &
    PIDS+=($!)
  done
  "$BIN/counter-router" --cluster "$DIR/cluster.toml" --listen "$ROUTER" > "$DIR/router.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    "$BIN/counter-cli" --router "$ROUTER" incr ready >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "== $KEYS keys per shard (2 shards, R = 3; data in $DIR)"
  start=$(date +%s.%N)
  "$BIN/counter-bench" --router "$ROUTER" --clients 64 --keys $((2 * KEYS)) \
    --distribution sequential --ops $((2 * KEYS)) --key-prefix fill- --no-verify --json \
    > "$DIR/fill.json" 2>/dev/null
  echo "filled $((2 * KEYS)) keys in $(python3 -c "import time;print(round(time.time()-$start,1))") s"
  w3 10s "W3, no move"
  "$BIN/counter-node" --id 4 --join "${ADDRS[0]}" --listen "${ADDRS[3]}" \
    --data-dir "$DIR/node-4" > "$DIR/node-4.log" 2>&1 &
  PIDS+=($!)
  sleep 1
  "$BIN/counter-cli" --router "$ROUTER" cluster add-node 4 "${ADDRS[3]}" > "$DIR/move.out" 2>&1 &
  MOVE=$!
  n=0
  while kill -0 "$MOVE" 2>/dev/null; do
    n=$((n + 1))
    if [ "${LOAD:-1}" = 0 ]; then sleep 5; continue; fi
    w3 5s "W3, during move ($n)"
    "$BIN/counter-cli" --router "$ROUTER" cluster status 2>/dev/null | grep -E "moving|available" | sed 's/^/    status: /' || true
  done
  wait "$MOVE" || echo "add-node failed: $(cat "$DIR/move.out")"
  echo "move: $(cat "$DIR/move.out")"
  grep -h "shard rescanned" "$DIR"/node-*.log | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  /'
  w3 10s "W3, after move"
  cleanup
  PIDS=()
done
