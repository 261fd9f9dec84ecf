#!/usr/bin/env bash
# End-to-end test of the container packaging (run it explicitly; not part of `cargo test`):
#
#   tools/docker-test.sh              base images if missing, release build, image, then the test
#   tools/docker-test.sh --no-build   test the image counter:latest as it is
#
# In a Compose project of its own (deploy/compose.yaml, a unique project name, ports on
# 127.0.0.1 chosen free), it: starts 3 nodes + router + Prometheus; waits for every shard to be
# served; counts through the router's published port (host counter-cli), inside the router
# container (the image's counter-cli) and over RESP, checking every value; waits for every
# healthcheck; checks that Prometheus scrapes all four servers; stops node3 and keeps counting
# (values must continue exactly) and sees Prometheus mark node3 down; starts node3 again (3/3
# ready); checks that a node started on another node's volume refuses with exit status 78; takes
# the project down and up again and reads the counts back from the volumes. Whatever happens,
# the project is removed with its volumes (a trap). Every wait is bounded; any failed check
# exits non-zero (logs of the containers are printed on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=1
for arg in "$@"; do
  case $arg in
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "docker-test.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

PROJECT=counter-test-$(date +%s)-$$
export COUNTER_IMAGE=${COUNTER_IMAGE:-counter:latest}
CLI=${CARGO_TARGET_DIR:-$PWD/target}/release/counter-cli
STARTED=$SECONDS

log() { printf '[docker-test %3ds] %s\n' $((SECONDS - STARTED)) "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

source tools/compose-env.sh # COMPOSE, export_nofile
compose() { timeout 180 "${COMPOSE[@]}" -p "$PROJECT" -f deploy/compose.yaml "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" != 0 ]; then
    log "failed (exit $rc); state and logs of project $PROJECT:"
    compose ps >&2 || true
    compose logs --no-color --tail=40 >&2 || true
  fi
  log "tearing down project $PROJECT (compose down -v)"
  compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 ||
    compose down -v --remove-orphans --timeout 10 >&2 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECS WHAT CMD...: runs CMD every second until it succeeds, at most SECS seconds.
wait_until() {
  local secs=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "gave up after ${secs}s waiting for: $what"; "$@" >&2 || true; return 1; }
    sleep 1
  done
  log "ok: $what"
}

cli() { timeout 60 "$CLI" --router "127.0.0.1:$COUNTER_ROUTER_PORT" "$@"; }

# expect_incr KEY EXPECTED [via]: one increment; its answer must be EXPECTED.
expect_incr() {
  local key=$1 want=$2 via=${3:-host} got
  case $via in
    host) got=$(cli incr "$key") || fail "incr $key (expected $want) failed, exit $?" ;;
    container) got=$(compose exec -T router counter-cli --router 127.0.0.1:7100 incr "$key") ||
      fail "incr $key inside the router container (expected $want) failed, exit $?" ;;
  esac
  [ "$got" = "$want" ] || fail "incr $key ($via) answered '$got', expected $want"
}

# count KEY FROM TO: increments KEY, expecting FROM..TO in order.
count() {
  local key=$1 i
  for ((i = $2; i <= $3; i++)); do expect_incr "$key" "$i"; done
  log "ok: incr $key x$(($3 - $2 + 1)) answered $2..$3"
}

# RESP: INCR KEY over the router's Redis port must answer :EXPECTED.
resp_incr() {
  local key=$1 want=$2 got
  got=$(timeout 20 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/$0
    printf "*2\r\n\$4\r\nINCR\r\n\$%d\r\n%s\r\n" "${#1}" "$1" >&3
    IFS= read -r line <&3; printf "%s" "${line%$'"'"'\r'"'"'}"' "$COUNTER_RESP_PORT" "$key") ||
    fail "RESP INCR $key: no answer"
  [ "$got" = ":$want" ] || fail "RESP INCR $key answered '$got', expected :$want"
  log "ok: RESP INCR $key answered $got"
}

status_has() { local out; out=$(cli --timeout-ms 5000 cluster status) && grep -qF "$1" <<<"$out"; }
serving() { cli --timeout-ms 5000 cluster status; }

healthy() {
  local s id
  for s in node1 node2 node3 router prometheus; do
    id=$(compose ps -q "$s")
    [ -n "$id" ] || return 1
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ] || return 1
  done
}

prom() { curl -fsS --max-time 5 "http://127.0.0.1:$PROMETHEUS_PORT$1"; }
# targets_health JOB INSTANCE HEALTH: Prometheus reports that scrape target's health.
target_is() {
  prom /api/v1/targets | python3 -c '
import json, sys
job, inst, want = sys.argv[1:]
ts = json.load(sys.stdin)["data"]["activeTargets"]
t = [t for t in ts if t["labels"]["job"] == job and t["labels"]["instance"] == inst]
sys.exit(0 if t and t[0]["health"] == want else 1)' "$1" "$2" "$3"
}
all_targets_up() {
  target_is counter-node node1:9100 up && target_is counter-node node2:9100 up &&
    target_is counter-node node3:9100 up && target_is counter-router router:9100 up
}
# build_info_series: counter_build_info as scraped from the four servers.
build_info_series() {
  prom '/api/v1/query?query=counter_build_info' |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))'
}

# ---------------------------------------------------------------------------------------------
log "project $PROJECT, image $COUNTER_IMAGE, compose: ${COMPOSE[*]}"
timeout 900 tools/make-base-image.sh
if [ "$BUILD" = 1 ]; then
  IMAGE=$COUNTER_IMAGE timeout 3600 tools/docker-image.sh
else
  IMAGE=$COUNTER_IMAGE timeout 600 tools/docker-image.sh --no-build
fi
docker image inspect "$COUNTER_IMAGE" >/dev/null || fail "no image $COUNTER_IMAGE"
log "image $COUNTER_IMAGE: $(docker image inspect --format '{{.Size}}' "$COUNTER_IMAGE" | awk '{printf "%.1f MB", $1 / 1e6}')"
[ -x "$CLI" ] || fail "$CLI missing (drop --no-build)"

export_nofile
COUNTER_ROUTER_PORT=$(free_port)
COUNTER_RESP_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
export COUNTER_ROUTER_PORT COUNTER_RESP_PORT PROMETHEUS_PORT
log "ports on 127.0.0.1: router $COUNTER_ROUTER_PORT, RESP $COUNTER_RESP_PORT, Prometheus $PROMETHEUS_PORT; nofile $COUNTER_NOFILE"

compose up -d >&2
wait_until 180 "every shard served (cluster status through the published port)" serving

count visits 1 20
expect_incr visits 21 container
log "ok: the image's counter-cli, inside the router container, answered 21"
resp_incr visits 22
got=$(cli incr stock 10) && [ "$got" = 10 ] || fail "incr stock 10 answered '$got'"
got=$(cli decr stock 3 --min 0) && [ "$got" = 7 ] || fail "decr stock 3 answered '$got'"
set +e; cli decr stock 8 --min 0 >/dev/null 2>&1; rc=$?; set -e
[ "$rc" = 5 ] || fail "decr stock 8 --min 0 should be rejected (exit 5), exit $rc"
log "ok: bounded counter (10, 7, then rejected with exit 5)"

wait_until 120 "every container healthy (healthchecks)" healthy
wait_until 90 "Prometheus scrapes node1-3 and the router (targets up)" all_targets_up
n=$(build_info_series) && [ "$n" = 4 ] || fail "counter_build_info: $n series in Prometheus, expected 4"
log "ok: counter_build_info scraped from 4 servers"

log "stopping node3"
compose stop node3 >&2
count visits 23 42
wait_until 30 "cluster status: 2/3 reachable, every shard available" status_has "2/3 nodes reachable"
status_has "64/64 shards available" || fail "shards unavailable with node3 down"
wait_until 60 "Prometheus marks node3 down" target_is counter-node node3:9100 down
target_is counter-node node1:9100 up || fail "Prometheus: node1 not up"

log "starting node3 again"
compose start node3 >&2
wait_until 120 "node3 back: 3/3 ready" status_has "3/3 nodes reachable, 3/3 ready, 64/64 shards available"
count visits 43 50

log "stopping the project (volumes kept)"
compose down --timeout 30 >&2
vol=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.volume=node1-data)
[ -n "$vol" ] || fail "node1's volume of project $PROJECT not found"
set +e
out=$(timeout 60 docker run --rm --network none -v "$vol:/data" \
  -v "$PWD/deploy/cluster.toml:/etc/counter/cluster.toml:ro" "$COUNTER_IMAGE" \
  counter-node --id 2 --cluster /etc/counter/cluster.toml --data-dir /data 2>&1)
rc=$?
set -e
[ "$rc" = 78 ] || fail "counter-node --id 2 on node1's volume: exit $rc (expected 78): $out"
log "ok: node1's volume under --id 2 refused with exit 78: ${out:0:150}"

compose up -d >&2
wait_until 120 "every shard served after down/up" serving
got=$(cli get visits) && [ "$got" = 50 ] || fail "after down/up: get visits answered '$got', expected 50"
got=$(cli get stock) && [ "$got" = 7 ] || fail "after down/up: get stock answered '$got', expected 7"
count visits 51 55
log "ok: counts kept in the volumes across down/up"

log "PASS ($((SECONDS - STARTED))s)"
