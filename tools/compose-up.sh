#!/usr/bin/env bash
# Starts the Compose cluster of deploy/compose.yaml (3 nodes, a router, Prometheus) in one
# command: base images if missing (tools/make-base-image.sh), release binaries and the image
# (tools/docker-image.sh), `up -d`, then waits until every shard is served.
#
#   tools/compose-up.sh              build and start (or update) the cluster; project "counter"
#   tools/compose-up.sh --no-build   start with the image as it is
#   tools/compose-up.sh status       counter-cli cluster status (run inside the router container)
#   tools/compose-up.sh down         stop and remove the containers; the data volumes stay
#   tools/compose-up.sh destroy      the same and delete the data volumes (every count!)
#
# PROJECT (default counter) is the Compose project name; COUNTER_ROUTER_PORT (7100),
# COUNTER_RESP_PORT (6379) and PROMETHEUS_PORT (9090) the ports published on 127.0.0.1;
# COUNTER_NOFILE the containers' open-file limit (default 65536, or the daemon's own limit).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=${PROJECT:-counter}
log() { echo "compose-up: $*" >&2; }

source tools/compose-env.sh # COMPOSE, export_nofile
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f deploy/compose.yaml "$@"; }
status() { compose exec -T router counter-cli --router 127.0.0.1:7100 cluster status; }

case ${1:-up} in
  down) compose down --remove-orphans; exit 0 ;;
  destroy) compose down --remove-orphans --volumes; exit 0 ;;
  status) status; exit $? ;;
  up | --no-build) ;;
  -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
  *) log "unknown argument $1 (see --help)"; exit 2 ;;
esac

tools/make-base-image.sh
if [ "${1:-}" != --no-build ]; then tools/docker-image.sh; fi

export_nofile
compose up -d --remove-orphans

log "waiting for every shard to be served (at most 180 s; a new cluster starts once all three nodes are up)..."
deadline=$((SECONDS + 180))
until status >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    status || true
    compose ps
    log "the cluster did not come up in 180 s; logs: docker-compose -p $PROJECT -f deploy/compose.yaml logs"
    exit 1
  fi
  sleep 2
done
status
cat >&2 <<EOF

router:      127.0.0.1:${COUNTER_ROUTER_PORT:-7100}  (target/release/counter-cli --router 127.0.0.1:${COUNTER_ROUTER_PORT:-7100} incr page_views)
Redis (RESP): 127.0.0.1:${COUNTER_RESP_PORT:-6379}
Prometheus:  http://127.0.0.1:${PROMETHEUS_PORT:-9090}/targets
inside:      docker-compose -p $PROJECT -f deploy/compose.yaml exec router counter-cli --router 127.0.0.1:7100 incr page_views
stop:        tools/compose-up.sh down   (data kept in the volumes; tools/compose-up.sh destroy deletes it)
EOF
