#!/usr/bin/env bash
# Builds the counter store's image (Dockerfile at the repo root) from host-built binaries:
#
#   tools/docker-image.sh              base images if missing, cargo build --release, stage,
#                                      docker build -t counter:latest (and counter:<version>)
#   tools/docker-image.sh --no-build   use the release binaries already in target/release
#
# IMAGE (default counter:latest) names the image; BASE (default counter-base:bookworm) the base
# the shared libraries come from (it must carry the glibc the binaries were linked against).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-counter:latest}
BASE=${BASE:-counter-base:bookworm}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
STAGE=$PWD/target/docker/bin # the one path the .dockerignore lets into the build context
BUILD=1
for arg in "$@"; do
  case $arg in
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "docker-image.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
log() { echo "docker-image: $*" >&2; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  if [ "$BASE" = counter-base:bookworm ]; then
    tools/make-base-image.sh
  else
    log "base image $BASE is missing"; exit 1
  fi
fi

if [ "$BUILD" = 1 ]; then
  log "cargo build --release (the first build compiles RocksDB: 15-20 minutes on 2 cores)..."
  cargo build --release --quiet --bin counter-node --bin counter-router --bin counter-cli
fi

rm -rf "$STAGE"
mkdir -p "$STAGE"
for bin in counter-node counter-router counter-cli; do
  [ -x "$TARGET/release/$bin" ] || { log "$TARGET/release/$bin is missing (drop --no-build)"; exit 1; }
  cp "$TARGET/release/$bin" "$STAGE/"
  # Debug info out (the release profile keeps line tables); symbol names stay for backtraces.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$STAGE/$bin"
  else
    log "no strip (binutils): $bin keeps its debug info (hundreds of MB)"
  fi
done

version=$("$STAGE/counter-node" --version | awk '{print $2}')
log "docker build $IMAGE (counter $version, base $BASE)..."
if ! docker build --build-arg BASE="$BASE" -t "$IMAGE" -t "${IMAGE%%:*}:$version" . \
  >"$PWD/target/docker/build.log" 2>&1; then
  tail -30 "$PWD/target/docker/build.log" >&2
  log "docker build failed (whole log: target/docker/build.log)"
  exit 1
fi
rm -rf "$STAGE"
# Untagged images of earlier builds of this Dockerfile (its label), and only those.
docker image prune -f --filter label=counter-store.build=1 >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' "${IMAGE%%:*}" >&2
