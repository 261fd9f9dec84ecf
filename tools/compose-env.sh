# Sourced by tools/compose-up.sh and tools/docker-test.sh: what both need to run
# deploy/compose.yaml on this machine.
#
# COMPOSE: the Compose command (the `docker compose` plugin, or the standalone docker-compose).
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi

# Exports COUNTER_NOFILE, the containers' open-file limit, unless already set: 65536, or the
# most this Docker daemon may grant (a daemon that runs with a lower hard limit itself refuses
# to start containers asking for more). Needs the base image (tools/make-base-image.sh).
export_nofile() {
  if [ -z "${COUNTER_NOFILE:-}" ]; then
    if docker run --rm --ulimit nofile=65536:65536 counter-base:bookworm true >/dev/null 2>&1; then
      COUNTER_NOFILE=65536
    else
      COUNTER_NOFILE=$(docker run --rm counter-base:bookworm sh -c 'ulimit -Hn')
    fi
  fi
  export COUNTER_NOFILE
}
