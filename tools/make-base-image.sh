#!/usr/bin/env bash
# Builds the two local base images the container packaging needs, without any image registry:
#
#   counter-base:bookworm        a minimal Debian 12 root (debootstrap --variant=minbase),
#                                `docker import`ed
#   counter-prometheus:bookworm  that root plus Debian's `prometheus` package (a second
#                                debootstrap root with --include=prometheus: see below)
#
#   tools/make-base-image.sh            build whichever image is missing
#   tools/make-base-image.sh --force    rebuild both
#
# Needs root (debootstrap), Docker, and a reachable Debian mirror (MIRROR, default
# http://deb.debian.org/debian). The roots are built under target/docker-roots/ and deleted
# after the import. Installs debootstrap with apt-get if it is missing.
#
# Why a second debootstrap root for Prometheus and not a Dockerfile running apt-get: a
# Dockerfile works only if containers reach the mirror; this script checks that and uses a
# Dockerfile when they do (PROMETHEUS_VIA=dockerfile|debootstrap|auto, default auto), else
# debootstrap on the host, which always works where this script can run at all.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-counter-base:bookworm}
PROM_IMAGE=${PROM_IMAGE:-counter-prometheus:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
WORK=${CARGO_TARGET_DIR:-$PWD/target}/docker-roots
PROMETHEUS_VIA=${PROMETHEUS_VIA:-auto}
FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "make-base-image.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "make-base-image: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  log "installing debootstrap..."
  as_root apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
    { as_root apt-get update -qq && as_root apt-get install -y -qq debootstrap; }
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)

# Trims a root (docs, man pages, locales, apt caches) and writes its apt sources.
trim_root() {
  local root=$1
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  # Keep docs, man pages and locales out of later apt-get installs too.
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
  : >"$root/etc/machine-id"
  # Containers get their resolv.conf and hostname from Docker.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
}

# debootstrap ROOT [extra args...]: a fresh minbase root.
make_root() {
  local root=$1
  shift
  as_root rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  log "debootstrap $SUITE into $root $* (a few minutes)..."
  if ! as_root "$DEBOOTSTRAP" --variant=minbase "$@" "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1; then
    tail -20 "$root.log" >&2
    log "debootstrap failed (whole log: $root.log)"
    exit 1
  fi
  trim_root "$root"
}

# import ROOT IMAGE [--change ...]: the root as a one-layer image.
import_root() {
  local root=$1 image=$2
  shift 2
  log "importing $root as $image..."
  as_root tar --numeric-owner --xattrs -C "$root" -c . | docker import "$@" - "$image" >/dev/null
  as_root rm -rf "$root"
}

if [ "$FORCE" = 1 ] || ! have_image "$BASE_IMAGE"; then
  make_root "$WORK/base"
  import_root "$WORK/base" "$BASE_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "Debian $SUITE minbase (debootstrap), tools/make-base-image.sh"
else
  log "$BASE_IMAGE exists (--force rebuilds it)"
fi

# The Prometheus image's settings, whichever way it is built: the Debian package's binary,
# its web assets, a config mounted at /etc/prometheus/prometheus.yml, data in a volume.
PROM_CHANGES=(
  --change 'USER prometheus'
  --change 'WORKDIR /var/lib/prometheus'
  --change 'VOLUME /var/lib/prometheus'
  --change 'EXPOSE 9090'
  --change 'ENTRYPOINT ["/usr/bin/prometheus"]'
  --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", "--web.console.libraries=/usr/share/prometheus/console_libraries", "--web.console.templates=/etc/prometheus/consoles"]'
)

containers_reach_mirror() {
  timeout 60 docker run --rm "$BASE_IMAGE" \
    bash -c "exec 3<>/dev/tcp/$(echo "$MIRROR" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')/80" \
    >/dev/null 2>&1
}

if [ "$FORCE" = 1 ] || ! have_image "$PROM_IMAGE"; then
  via=$PROMETHEUS_VIA
  if [ "$via" = auto ]; then
    if containers_reach_mirror; then via=dockerfile; else via=debootstrap; fi
    log "containers $([ $via = dockerfile ] && echo reach || echo do not reach) the mirror: Prometheus via $via"
  fi
  if [ "$via" = dockerfile ]; then
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    {
      echo "FROM $BASE_IMAGE"
      # moment-timezone's unpacked zone data (212 MB) is not used by Prometheus' web UI.
      echo 'RUN echo "path-exclude /usr/share/javascript/moment-timezone/data/*" >/etc/dpkg/dpkg.cfg.d/02-tzdata-js \'
      echo ' && apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \'
      echo ' && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log'
      for ((i = 0; i < ${#PROM_CHANGES[@]}; i += 2)); do echo "${PROM_CHANGES[i + 1]}"; done
    } >"$ctx/Dockerfile"
    log "docker build $PROM_IMAGE (apt-get install prometheus in a container)..."
    docker build -q -t "$PROM_IMAGE" "$ctx" >/dev/null
  else
    make_root "$WORK/prometheus" --include=prometheus
    # moment-timezone's unpacked zone data (212 MB) is not used by Prometheus' web UI.
    as_root rm -rf "$WORK/prometheus/usr/share/javascript/moment-timezone/data"
    as_root mkdir -p "$WORK/prometheus/var/lib/prometheus"
    as_root chroot "$WORK/prometheus" chown prometheus:prometheus /var/lib/prometheus
    import_root "$WORK/prometheus" "$PROM_IMAGE" "${PROM_CHANGES[@]}" \
      --message "Debian $SUITE minbase + prometheus (debootstrap), tools/make-base-image.sh"
  fi
else
  log "$PROM_IMAGE exists (--force rebuilds it)"
fi

docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' |
  grep -E "^(${BASE_IMAGE}|${PROM_IMAGE})\b" >&2 || true
