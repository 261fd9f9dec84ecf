#!/usr/bin/env bash
# The Redis-protocol front door under redis-benchmark, beside counter-bench W3 on the same
# cluster and a local redis-server with every write fsynced (BENCHMARKS.md, "Redis protocol
# front door").
#
#   tools/resp-bench.sh [N]      # N increments per redis-benchmark run (default 100000)
#
# Starts 3 counter-nodes (R=3, fsync on) on 127.0.0.1:7501-7503, a router on :7500 with
# --resp-listen :7510, and redis-server on :7520 (--appendonly yes --appendfsync always
# --save ''), each with its data under a fresh /tmp dir; stops them by PID on exit.
# Needs redis-tools and redis-server (apt-get install -y redis-tools redis-server) and the
# release binaries (BIN=DIR to take them from elsewhere; default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-lib.sh
N=${1:-100000}
BIN=${BIN:-$PWD/target/release}
DATA=$(mktemp -d /tmp/resp-bench.XXXXXX)
PIDS=()
cleanup() {
  stop_started
  rm -rf "$DATA"
}
trap cleanup EXIT

cat > "$DATA/cluster.toml" <<TOML
replication = 3
shards = 64
[[node]]
id = 1
addr = "127.0.0.1:7501"
[[node]]
id = 2
addr = "127.0.0.1:7502"
[[node]]
id = 3
addr = "127.0.0.1:7503"
TOML
for id in 1 2 3; do
  "$BIN/counter-node" --id "$id" --cluster "$DATA/cluster.toml" --data-dir "$DATA/node-$id" \
    >>"$DATA/node-$id.log" 2>&1 &
  PIDS+=($!)
done
"$BIN/counter-router" --cluster "$DATA/cluster.toml" --listen 127.0.0.1:7500 \
  --resp-listen 127.0.0.1:7510 >>"$DATA/router.log" 2>&1 &
PIDS+=($!)
mkdir -p "$DATA/redis"
redis-server --port 7520 --bind 127.0.0.1 --dir "$DATA/redis" --appendonly yes \
  --appendfsync always --save '' --daemonize no >"$DATA/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do
  "$BIN/counter-cli" --router 127.0.0.1:7500 get warmup >/dev/null 2>&1 \
    && [ "$(redis-cli -p 7520 ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done

echo "# $(date -u +%Y-%m-%d) $(nproc) cores, N=$N"
run() { echo "\$ $*"; "$@"; }
run redis-benchmark -p 7510 -t incr -n "$N" -c 64 -q
run redis-benchmark -p 7510 -t incr -n "$N" -c 64 -q -P 1
run redis-benchmark -p 7510 -t incr -n "$N" -c 64 -q -r 10000
run redis-benchmark -p 7510 -t incr -n "$N" -c 64 -q -r 10000 -P 16
run "$BIN/counter-bench" --router 127.0.0.1:7500 --clients 64 --keys 10000 --duration 10s --warmup 2s
run redis-benchmark -p 7520 -t incr -n "$N" -c 64 -q
run redis-benchmark -p 7520 -t incr -n "$N" -c 64 -q -r 10000
# The hot key redis-benchmark increments, read back through both doors.
echo "counter:__rand_int__ via RESP: $(redis-cli -p 7510 get counter:__rand_int__), via counter-cli: $("$BIN/counter-cli" --router 127.0.0.1:7500 get counter:__rand_int__)"
