# Shared by the benchmark scripts (sourced, not run): the workloads of BENCHMARKS.md and the
# stopping of what a script started.

# W6's keys: W6_KEYS of them (default 10^7) under this prefix, each left at 1 by a fill first
# (see bench-suite.sh).
W6_KEYS=${W6_KEYS:-10000000}
W6_PREFIX=w6-

# counter-bench's arguments for workload W1-W6.
args_of() {
  case "$1" in
    W1) echo "--clients 1 --keys 1" ;;
    W2) echo "--clients 64 --keys 1 --distribution hot" ;;
    W3) echo "--clients 64 --keys 10000" ;;
    W4) echo "--clients 256 --keys 10000" ;;
    W5) echo "--clients 64 --keys 1000000 --distribution zipf:0.99" ;;
    W6) echo "--clients 64 --keys $W6_KEYS --key-prefix $W6_PREFIX" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}

# Stops every process in PIDS (started by the script, by PID) and waits for them.
stop_started() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
