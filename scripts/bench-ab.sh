#!/usr/bin/env bash
# In-kernel cost of two or more agent builds, side by side, on a shared machine.
#
#   scripts/bench-ab.sh [--reps N] [--duration SEC] [--load MODE] AGENT...
#
# MODE is a bench_load mode (tcp-connect, udp-connect, exec, drop, mix) or
# dns: build/bench/bench_dns_load's query loop against a dnsmasq of its own
# run in a cgroup of its own, which the agents capture (CAPTURE_CGROUP: the
# dns programs run on the load's packets alone, every query and answer
# recorded) while dnsmasq runs outside it.
#
# Every AGENT binary (e.g. a copy of bin/ebpf-agent from before a change, and
# the current one) runs at the same time, all attached to the same hooks, so
# each bench_load run (default: tcp-connect) fires every build's programs on
# the very same events: the load of the rest of the machine falls on all of
# them alike, which a before/after of whole runs cannot promise when others
# compile on the same CPUs. The program attached first pays the cache misses
# the later ones are spared, so the builds run once in each rotation of their
# order. Prints the median ns per run of each program of each build and the
# spread of the middle half of the runs (kernel.bpf_stats_enabled=1,
# run_time_ns / run_cnt deltas, N runs x (number of builds) rotations), and
# each build's ratio to the first: per run (the same events), its median in
# each rotation, the geometric mean of those (each build attached first
# once) with the lowest and highest. Pass the same binary under two names
# to see the noise. Needs root and `make bench-bins`.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=7 DUR=1.5 LOAD=tcp-connect
while [ $# -gt 0 ]; do
  case "$1" in
  --reps) REPS=$2; shift 2 ;;
  --duration) DUR=$2; shift 2 ;;
  --load) LOAD=$2; shift 2 ;;
  -*) echo "usage: scripts/bench-ab.sh [--reps N] [--duration SEC] [--load MODE] AGENT..." >&2; exit 2 ;;
  *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: scripts/bench-ab.sh [--reps N] [--duration SEC] [--load MODE] AGENT..." >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench-ab: needs root (eBPF, kernel.bpf_stats_enabled)" >&2; exit 1; }
for t in jq curl bpftool nats-server python3 $([ "$LOAD" = dns ] && echo dnsmasq dig); do
  command -v "$t" >/dev/null || { echo "bench-ab: $t not installed (make deps)" >&2; exit 1; }
done
for b in bench_load bench_dns_load bench_sub; do
  [ -x build/bench/$b ] || { echo "bench-ab: build/bench/$b missing: make bench-bins" >&2; exit 1; }
done
for a in "$@"; do [ -x "$a" ] || { echo "bench-ab: $a is not an executable" >&2; exit 1; }; done

TMP=$(mktemp -d)
LOG="$TMP/bench-ab.log"
PIDS=()
BENCH=bench-ab
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
STATS_ORIG=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  set +e
  stop_pids TERM "${PIDS[@]:-}"
  sysctl -q -w kernel.bpf_stats_enabled="$STATS_ORIG"
  [ -z "${CG:-}" ] || rmdir "$CG"
  rm -rf "$TMP"
}
trap cleanup EXIT

stats() { bpftool prog show -j | jq -r '.[] | "\(.id) \(.run_time_ns // 0) \(.run_cnt // 0)"'; }

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
start_listener "nats://127.0.0.1:$NATS_PORT"

DNS_PORT="" CG=""
if [ "$LOAD" = dns ]; then
  CG=$(make_cgroup "bench-ab-$$") || exit 1
  DNS_PORT=$(free_port)
  dnsmasq --no-daemon --no-resolv --no-hosts --port="$DNS_PORT" --listen-address=127.0.0.1 \
    --bind-interfaces --host-record=a.test,10.11.12.13 --local=/test/ \
    --pid-file="$TMP/dnsmasq.pid" >"$TMP/dnsmasq.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    dig +time=1 +tries=1 -p "$DNS_PORT" @127.0.0.1 a.test >/dev/null 2>&1 && break
    sleep 0.05
  done
fi

load() {
  if [ "$LOAD" = dns ]; then
    in_cgroup "$CG" build/bench/bench_dns_load dns --server "127.0.0.1:$DNS_PORT" --name a.test \
      --duration "$DUR"
  else
    build/bench/bench_load "$LOAD" --duration "$DUR"
  fi
}

# One rotation: start the builds in this order, run the load REPS times, stop them.
rotation() {
  local ports=() pids=() i a port r
  for a in "$@"; do
    port=$(free_port)
    env NATS_URL="nats://127.0.0.1:$NATS_PORT" LISTEN_ADDR="127.0.0.1:$port" NODE_NAME=bench-ab \
      ${DNS_PORT:+DNS_PORTS=$DNS_PORT DNS_RATE_LIMIT=1000000 CAPTURE_CGROUP=$CG} \
      "$a" >>"$TMP/agent.$(basename "$a").log" 2>&1 &
    pids+=($!)
    PIDS+=($!)
    ports+=("$port")
    wait_ready "$port" "$!" "$TMP/agent.$(basename "$a").log"
  done
  for r in $(seq "$REPS"); do
    sysctl -q -w kernel.bpf_stats_enabled=1
    stats >"$TMP/before"
    load >/dev/null
    stats >"$TMP/after"
    sysctl -q -w kernel.bpf_stats_enabled=0
    i=0
    for a in "$@"; do
      # Programs two entries share (sys_exit) are listed once, under the first name.
      curl -s -m 10 "http://127.0.0.1:${ports[$i]}/api/programs" |
        jq -r '.programs[] | select(.status == "attached") | "\(.id) \(.name | sub("^tp_btf__"; ""))"' |
        sort -u -k1,1 | while read -r id name; do
          join <(grep "^$id " "$TMP/before") <(grep "^$id " "$TMP/after") |
            awk -v a="$a" -v n="$name" -v k="$ROT" -v r="$r" \
              '$5 > $3 {printf "%s %s %.1f %s %s\n", a, n, ($4 - $2) / ($5 - $3), k, r}'
        done >>"$TMP/samples"
      i=$((i + 1))
    done
  done
  stop_pids TERM "${pids[@]}"
}

builds=("$@")
for k in $(seq 0 $((${#builds[@]} - 1))); do
  order=("${builds[@]:$k}" "${builds[@]:0:$k}")
  echo "bench-ab: rotation $((k + 1)) of ${#builds[@]}: ${order[*]}" >&2
  ROT=$k
  rotation "${order[@]}"
done

python3 - "$TMP/samples" "$LOAD" "$@" <<'PY'
import math, statistics, sys
samples, load, builds = sys.argv[1], sys.argv[2], sys.argv[3:]
ns = {}
runs = {}  # (prog, build) -> {(rotation, run): ns}
for line in open(samples):
    a, prog, v, rot, run = line.split()
    ns.setdefault(prog, {}).setdefault(a, []).append(float(v))
    runs.setdefault((prog, a), {})[(rot, run)] = float(v)


def cell(v):
    # The median, and the spread of the middle half of the runs (first to third quartile).
    if len(v) < 4:
        return f"{statistics.median(v):.0f}"
    q = statistics.quantiles(v, n=4)
    return f"{statistics.median(v):.0f} ({q[0]:.0f}–{q[2]:.0f})"


def paired(prog, a, b):
    # Both builds ran on the very same events in each run, so each run gives a ratio b / a.
    # The build attached first pays cache misses the others are spared, which moves the
    # ratios of a rotation together: the median of each rotation's ratios, then their
    # geometric mean (each build first once), with the lowest and highest rotation.
    ra, rb = runs.get((prog, a), {}), runs.get((prog, b), {})
    by_rot = {}
    for key, x in ra.items():
        if key in rb and x > 0:
            by_rot.setdefault(key[0], []).append(rb[key] / x)
    if not by_rot:
        return "–"
    med = [statistics.median(r) for r in by_rot.values()]
    gm = math.exp(sum(math.log(m) for m in med) / len(med))
    return f"{gm:.2f}x ({min(med):.2f}–{max(med):.2f})"


print(f"median ns per program run (first to third quartile), {load} loop "
      f"({len(next(iter(next(iter(ns.values())).values())))} runs each)")
extra = [f"{b} ÷ {builds[0]} (runs paired; rotations)" for b in builds[1:]]
print("| program | " + " | ".join(builds + extra) + " |")
print("|---|" + "---:|" * (len(builds) + len(extra)))
for prog in sorted(ns):
    cells = [cell(ns[prog][a]) if a in ns[prog] else "–" for a in builds]
    cells += [paired(prog, builds[0], b) for b in builds[1:]]
    print(f"| {prog} | " + " | ".join(cells) + " |")
PY
