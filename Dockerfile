# The counter store's image: counter-node, counter-router and counter-cli, the shared libraries
# they load, and nothing else (no shell, no package manager).
#
# The binaries are built on the host and staged by tools/docker-image.sh, which is the way to
# build this image:
#
#   tools/docker-image.sh          # cargo build --release, stage, docker build -t counter:latest
#
# By hand (the .dockerignore keeps the build context to the staged binaries):
#
#   cargo build --release --bin counter-node --bin counter-router --bin counter-cli
#   mkdir -p target/docker/bin && cp target/release/counter-{node,router,cli} target/docker/bin/
#   docker build -t counter:latest .
#
# BASE must have the glibc the binaries were linked against (the host's: Debian 12 here);
# tools/make-base-image.sh builds counter-base:bookworm with debootstrap (no registry needed).
ARG BASE=counter-base:bookworm

# Stage 1, on the base: the binaries and, found with ldd, every shared library they load.
FROM ${BASE} AS collect
# Every image this file makes carries the label, so tools/docker-image.sh can prune the untagged
# ones it leaves behind (and nothing else).
LABEL counter-store.build=1
COPY target/docker/bin/ /out/usr/local/bin/
RUN set -eu; \
    cd /out/usr/local/bin; \
    for bin in counter-node counter-router counter-cli; do test -x "$bin"; done; \
    if ldd ./* | grep -F 'not found'; then echo "missing shared libraries" >&2; exit 1; fi; \
    for lib in $(ldd ./* | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do \
      cp -L --parents "$lib" /out/; \
    done; \
    mkdir -p /out/etc /out/data /out/tmp; \
    chmod 1777 /out/tmp; \
    chown 10001:10001 /out/data; \
    echo 'counter:x:10001:10001:counter store:/data:/nonexistent' > /out/etc/passwd; \
    echo 'counter:x:10001:' > /out/etc/group; \
    echo 'hosts: files dns' > /out/etc/nsswitch.conf; \
    find /out ! -type d | sort

# Stage 2: only what stage 1 collected.
FROM scratch
LABEL counter-store.build=1 org.opencontainers.image.title=counter-store \
      org.opencontainers.image.description="counter-node, counter-router, counter-cli"
COPY --from=collect /out/ /
# NO_COLOR: plain log lines (no ANSI colours) for docker logs and log drivers.
ENV PATH=/usr/local/bin NO_COLOR=1
USER 10001:10001
WORKDIR /data
VOLUME /data
# 7100 router (counter protocol), 7101 node, 6379 router (RESP), 9100 metrics (/metrics,
# /healthz, /readyz) of node and router.
EXPOSE 7100 7101 6379 9100
# No default process: the command names counter-node, counter-router or counter-cli
# (deploy/compose.yaml), e.g.
#   docker run counter:latest counter-cli --router router:7100 incr page_views
CMD ["counter-cli", "--help"]
