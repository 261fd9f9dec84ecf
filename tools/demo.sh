#!/usr/bin/env bash
# Starts a local 3-node cluster and a router, with data in ./data, and counts something.
#
#   tools/demo.sh          build (release), start the cluster if it is not running, count
#   tools/demo.sh stop     stop the processes this script started (by the PIDs it recorded)
#
# Nodes listen on 127.0.0.1:7101-7103, the router on 127.0.0.1:7100. Logs: data/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-$PWD/data}
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
ROUTER=127.0.0.1:7100

stop() {
  for pidfile in "$DATA"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
    rm -f "$pidfile"
  done
  echo "stopped (data kept in $DATA)"
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need clang && ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "installing libclang-dev (the rocksdb crate needs it)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libclang-dev; else sudo apt-get update -qq && sudo apt-get install -y -qq libclang-dev; fi
fi
echo "building (the first build compiles RocksDB: 15-20 minutes on 2 cores)..." >&2
cargo build --release --quiet -p counter

mkdir -p "$DATA"
cat > "$DATA/cluster.toml" <<TOML
replication = 3
shards = 64
[[node]]
id = 1
addr = "127.0.0.1:7101"
[[node]]
id = 2
addr = "127.0.0.1:7102"
[[node]]
id = 3
addr = "127.0.0.1:7103"
TOML

running() { [ -e "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
for id in 1 2 3; do
  if ! running "$DATA/node-$id.pid"; then
    "$BIN/counter-node" --id "$id" --cluster "$DATA/cluster.toml" --data-dir "$DATA/node-$id" \
      >>"$DATA/node-$id.log" 2>&1 &
    echo $! > "$DATA/node-$id.pid"
  fi
done
if ! running "$DATA/router.pid"; then
  "$BIN/counter-router" --cluster "$DATA/cluster.toml" --listen "$ROUTER" >>"$DATA/router.log" 2>&1 &
  echo $! > "$DATA/router.pid"
fi

cli() { "$BIN/counter-cli" --router "$ROUTER" "$@"; }
for _ in $(seq 100); do cli get page_views >/dev/null 2>&1 && break; sleep 0.1; done

echo "cluster up: nodes 127.0.0.1:7101-7103, router $ROUTER, data in $DATA"
for _ in 1 2 3 4 5; do echo "incr page_views -> $(cli incr page_views)"; done
echo "incr stock:sku-123 10 -> $(cli incr stock:sku-123 10)"
echo "decr stock:sku-123 3 -> $(cli decr stock:sku-123 3)"
echo "get page_views -> $(cli get page_views)"
echo
echo "try: $BIN/counter-cli --router $ROUTER incr page_views"
echo "stop with: tools/demo.sh stop   (run this script again to restart; the counts persist)"
