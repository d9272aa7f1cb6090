#!/usr/bin/env bash
# The cost of the dns capture (bpf/dns.bpf.c; docs/performance.md, "DNS
# capture"). Part of `make bench` (scripts/bench.sh); runs alone too:
#
#   scripts/bench-dns.sh [--quick] [--rounds N] [--duration SEC]
#
# 1. In-kernel cost: the agent (EVENT_TYPES=dns, every query recorded) with
#    its programs on a cgroup of this benchmark (CAPTURE_CGROUP), and an empty
#    cgroup_skb program (return 1) on each of the same hooks; the loads
#    (build/bench/bench_dns_load) run inside that cgroup and dnsmasq outside
#    it, so every run of the programs is a packet of the load: non-DNS UDP
#    datagrams, a non-DNS TCP stream, and DNS queries and their answers (every
#    run then records one). With BPF run-time statistics held on (BPF_ENABLE_STATS,
#    two clock reads around each run), ns per run = run_time_ns / run_cnt; the
#    empty program's figure is what the statistics and the hook's dispatch
#    cost by themselves, so the program's own cost is the difference.
# 2. Throughput: UDP datagrams (to a receiving thread, and sent and received
#    in one thread: udp-inline) and a TCP stream over loopback without the
#    agent, with it (programs on the cgroup v2 root, as deployed; statistics
#    off), with only an empty cgroup_skb program on each of the same hooks
#    (what the kernel's dispatch into the hooks costs by itself) and with only
#    an empty program on each of the device-level packet tracepoints
#    (net_dev_queue, netif_receive_skb: the other place a capture could see
#    every packet without kprobes, tests/bench/empty_dev_progs.bpf.c),
#    alternated round by round; slowdown = median of each round's ratio, and the same for
#    the load's CPU time per op (getrusage), which what else runs on the
#    machine moves less than the rate.
# 3. Side by side with a peer that captures DNS: the query loop's rate with
#    nothing, under the agent and under `tcpdump -w /dev/null` on the
#    server's port, alternated the same way.
#
# Writes build/bench/dns.json (one measurement per line's object, with its
# target, met and validity, like scripts/bench-agent.sh) and build/bench/dns.md.
# Needs root, dnsmasq, tcpdump, bin/ebpf-agent and make bench-bins.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
ROUNDS=5
DUR=2
while [ $# -gt 0 ]; do
  case "$1" in
  --quick) QUICK=1 ROUNDS=1 DUR=0.3; shift ;;
  --rounds) ROUNDS="$2"; shift 2 ;;
  --duration) DUR="$2"; shift 2 ;;
  *) echo "usage: $0 [--quick] [--rounds N] [--duration SEC]" >&2; exit 2 ;;
  esac
done

OUT=build/bench
mkdir -p "$OUT"
RAW="$OUT/dns.jsonl"
: >"$RAW"
LOG="$OUT/dns.log"
: >"$LOG"
LOAD=$OUT/bench_dns_load

[ "$(id -u)" -eq 0 ] || { echo "bench-dns: needs root (loads eBPF programs)" >&2; exit 1; }
for bin in bin/ebpf-agent $LOAD $OUT/bench_empty_progs $OUT/bench_sub; do
  [ -x "$bin" ] || { echo "bench-dns: $bin missing: run 'make bench-bins'" >&2; exit 1; }
done
[ -e "$OUT/empty_dev_progs.bpf.o" ] || { echo "bench-dns: $OUT/empty_dev_progs.bpf.o missing: run 'make bench-bins'" >&2; exit 1; }
for tool in jq curl bpftool nats-server dnsmasq python3; do
  command -v "$tool" >/dev/null || { echo "bench-dns: $tool not installed (make deps)" >&2; exit 1; }
done
TCPDUMP=$(PATH=$PATH:/usr/sbin:/sbin command -v tcpdump || true)

TMP=$(mktemp -d /tmp/bench-dns.XXXXXX)
PIDS=()
BENCH=bench-dns
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
CG=""
cleanup() {
  local rc=$?
  set +e
  stop_pids TERM "${PIDS[@]:-}"
  [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT

# measure ID NAME VALUE UNIT COMMAND [TARGET_OP TARGET [INVALID_REASON]] (as bench-agent.sh)
measure() {
  local id=$1 name=$2 value=$3 unit=$4 cmd=$5 op=${6:-} target=${7:-} why=${8:-}
  jq -cn --arg id "$id" --arg name "$name" --argjson value "$value" --arg unit "$unit" \
    --arg cmd "$cmd" --arg op "$op" --arg target "$target" --arg why "$why" '
    {id: $id, name: $name, value: $value, unit: $unit, command: $cmd}
    + (if $op == "" then {target: null, met: null}
       else ($target | tonumber) as $t
       | {target: ({le: "<= ", ge: ">= "}[$op] + $target),
          met: (if $op == "le" then $value <= $t else $value >= $t end)} end)
    + {valid: ($why == ""), invalid_reason: (if $why == "" then null else $why end)}' >>"$RAW"
}
log() { echo "bench-dns: $*" | tee -a "$LOG" >&2; }

# ---------------------------------------------------------------- servers, cgroup
NATS_PORT=$(free_port)
NATS_URL="nats://127.0.0.1:$NATS_PORT"
DNS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >>"$LOG" 2>&1 &
PIDS+=($!)
start_listener "$NATS_URL"
dnsmasq --no-daemon --no-resolv --no-hosts --port="$DNS_PORT" --listen-address=127.0.0.1 \
  --bind-interfaces --host-record=a.test,10.11.12.13 --local=/test/ \
  --pid-file="$TMP/dnsmasq.pid" >>"$LOG" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  dig +time=1 +tries=1 -p "$DNS_PORT" @127.0.0.1 a.test >/dev/null 2>&1 && break
  sleep 0.05
done

CG=$(make_cgroup "bench-dns-$$") || exit 1
load() { # mode [args] -> the load's JSON line
  local mode=$1
  shift
  in_cgroup "$CG" "$LOAD" "$mode" "$@" --duration "$DUR"
}

# Empty programs on net_dev_queue and netif_receive_skb (tests/bench/empty_dev_progs.bpf.c),
# held like start_hooks' (stop_hooks ends them).
start_dev_hooks() {
  hold_hooks "on the device tracepoints" "$TMP/devhooks" \
    "$OUT/bench_empty_progs" "$OUT/empty_dev_progs.bpf.o" "$TMP/devhooks"
}

dns_prog_ids() { # -> "id egress|ingress" of the agent's attached dns programs
  curl -s -m 10 "$AGENT_API/api/programs" | jq -r '.programs[]
    | select((.name | startswith("cgroup_skb__dns_")) and .status == "attached" and .id > 0)
    | "\(.id) \(.name | sub("^cgroup_skb__dns_"; ""))"'
}
kernel_losses() { # -> kernel drops + suppressed of the agent
  curl -s -m 10 "$AGENT_API/api/stats" | jq '.kernel_drops + .drops_suppressed'
}

# ---------------------------------------------------------------- 1. in-kernel cost
prog_stats() { # ids file -> "id name run_time_ns run_cnt" lines
  local id name
  while read -r id name; do
    echo "$id $name $(bpftool prog show id "$id" -j | jq -r '"\(.run_time_ns // 0) \(.run_cnt // 0)"')"
  done <"$1"
}
records() { curl -s -m 10 "$AGENT_API/api/programs" | jq '[.programs[] | select(.name | startswith("cgroup_skb__dns_")) | .events] | add'; }

log "in-kernel cost (cgroup $CG)"
# The agent's programs first, as on a node where they are alone on the hook: the first
# program of a hook pays the cache lines a later one finds warm, and the empty programs,
# attached after them, then show the statistics' own cost and the dispatch only.
start_agent EVENT_TYPES=dns CAPTURE_CGROUP="$CG" DNS_PORTS="$DNS_PORT" DNS_RATE_LIMIT=1000000
dns_prog_ids >"$TMP/ids"
# scripts/bench-hooks.py holds run-time statistics on (--stats) while the empty programs live.
start_hooks "$CG" "$TMP/empty" --stats || exit 1
cat "$TMP/empty" >>"$TMP/ids"
KWHY=""
n=$(grep -c -v empty_ "$TMP/ids" || true)
[ "$n" -eq 2 ] || KWHY="missing program: the agent attached $n of 2 dns programs"

declare -A NS RUNS
KLOADS="udp tcp dns"
declare -A KARGS=([udp]="--size 64" [tcp]="" [dns]="--server 127.0.0.1:$DNS_PORT")
declare -A KNAME=([udp]="non-DNS UDP datagram (64 bytes)" [tcp]="non-DNS TCP segment (bulk stream)"
  [dns]="DNS query (egress) / answer (ingress), each recorded")
for r in $(seq "$ROUNDS"); do
  for w in $KLOADS; do
    l0=$(kernel_losses) rec0=$(records)
    prog_stats "$TMP/ids" >"$TMP/before"
    # shellcheck disable=SC2086
    out=$(load "$w" ${KARGS[$w]})
    prog_stats "$TMP/ids" >"$TMP/after"
    rec1=$(records) l1=$(kernel_losses)
    echo "kernel round $r $w: $out" >>"$LOG"
    while read -r _ name t0 c0 _ t1 c1; do
      NS["$w|$name"]="${NS["$w|$name"]:-} $(echo "$t0 $t1 $c0 $c1" | awk '{printf "%.1f", ($4 > $3 ? ($2 - $1) / ($4 - $3) : 0)}')"
      RUNS["$w|$name"]=$((${RUNS["$w|$name"]:-0} + c1 - c0))
    done < <(join <(sort "$TMP/before") <(sort "$TMP/after"))
    [ "$((l1 - l0))" -eq 0 ] || KWHY="${KWHY:+$KWHY; }agent losses during the $w load: $((l1 - l0))"
    if [ "$w" = dns ]; then
      # Every run of the programs under this load is a query or an answer: each is recorded.
      runs=$(awk '$2 ~ /^(egress|ingress)$/ {s += $4} END {print s}' "$TMP/after")
      runs0=$(awk '$2 ~ /^(egress|ingress)$/ {s += $4} END {print s}' "$TMP/before")
      [ $((rec1 - rec0)) -eq $((runs - runs0)) ] ||
        KWHY="${KWHY:+$KWHY; }dns load: $((runs - runs0)) program runs but $((rec1 - rec0)) records"
    fi
  done
done
stop_hooks
stop_agent

declare -A TARGET=([udp]=50 [tcp]=50 [dns]=500)
KTABLE=""
for w in $KLOADS; do
  for dir in egress ingress; do
    raw=$(echo "${NS["$w|$dir"]}" | median)
    empty=$(echo "${NS["$w|empty_$dir"]}" | median)
    net=$(echo "$raw $empty" | awk '{printf "%.1f", $1 - $2}')
    cmd="CAPTURE_CGROUP=<bench cgroup> ebpf-agent; BPF_ENABLE_STATS; bench_dns_load $w ${KARGS[$w]} --duration $DUR in the cgroup, $ROUNDS rounds; bpftool prog show (run_time_ns/run_cnt), median"
    measure "dns.kernel.$w.$dir.ns_per_run" "dns $dir program: ns per run, $w load (statistics included)" \
      "$raw" ns "$cmd" "" "" "$KWHY"
    measure "dns.kernel.$w.empty_$dir.ns_per_run" "empty cgroup_skb $dir program: ns per run, $w load" \
      "$empty" ns "$cmd" "" "" "$KWHY"
    measure "dns.kernel.$w.$dir.ns_per_packet" "dns $dir program: ns per ${KNAME[$w]%% (*} packet, over the empty program" \
      "$net" ns "$cmd; minus the empty program's median" le "${TARGET[$w]}" "$KWHY"
    KTABLE+="| ${KNAME[$w]} | $dir | ${RUNS["$w|$dir"]} | $(echo "${NS["$w|$dir"]}" | range) | $raw | $empty | $net | ≤ ${TARGET[$w]} |"$'\n'
  done
done

# ---------------------------------------------------------------- 2. throughput, 3. peer
# Rounds of: the load without a capture, then under each capture, in turn; the
# agent as deployed (cgroup v2 root, DNS_PORTS with the server's port, every
# query recorded: DNS_RATE_LIMIT high); the empty programs linked where the agent
# links its own.
declare -A RATE CPU # [load|capture]: the rounds' rates, the load's CPU-ns per op
# Throughput tests: full-size datagrams (as iperf sends), 64 KiB TCP writes. udp has a
# receiving thread, whose sleeps and wakeups take part in its rate; udp-inline sends and
# receives in one thread, so its CPU per op is each datagram's own cost (bench_dns_load.c).
SLOADS="udp udp-inline tcp dns"
declare -A SARGS=([udp]="--size 1400" [udp-inline]="--size 1400" [tcp]=""
  [dns]="--server 127.0.0.1:$DNS_PORT")
TWHY=""
run_round() { # capture: none|agent|hooks|devhooks|tcpdump
  local c=$1 w out
  for w in $SLOADS; do
    # shellcheck disable=SC2086
    out=$(load "$w" ${SARGS[$w]})
    echo "speed round $c $w: $out" >>"$LOG"
    RATE["$w|$c"]="${RATE["$w|$c"]:-} $(echo "$out" | jq -r "if .mode == \"tcp\" then .mb_per_sec else .ops_per_sec end")"
    CPU["$w|$c"]="${CPU["$w|$c"]:-} $(echo "$out" | jq -r .cpu_ns_per_op)"
  done
}
log "throughput and peer, $ROUNDS rounds"
# One capture's runs of a round: nothing, the agent, the empty programs or tcpdump.
capture_round() {
  local c=$1 r=$2 l0 l1 td
  case $c in
  none) run_round none ;;
  hooks)
    start_hooks "$CGROOT" "$TMP/hooks" || exit 1
    run_round hooks
    stop_hooks
    ;;
  devhooks)
    start_dev_hooks || exit 1
    run_round devhooks
    stop_hooks
    ;;
  agent)
    start_agent EVENT_TYPES=dns DNS_PORTS="53,$DNS_PORT" DNS_RATE_LIMIT=1000000
    l0=$(kernel_losses)
    run_round agent
    l1=$(kernel_losses)
    [ "$((l1 - l0))" -eq 0 ] || TWHY="${TWHY:+$TWHY; }agent losses in round $r: $((l1 - l0))"
    stop_agent
    ;;
  tcpdump)
    [ -n "$TCPDUMP" ] || return 0
    : >"$TMP/tcpdump.err"
    "$TCPDUMP" -i lo -n -w /dev/null "port $DNS_PORT" 2>>"$TMP/tcpdump.err" &
    td=$!
    PIDS+=("$td")
    for _ in $(seq 100); do grep -q "listening on" "$TMP/tcpdump.err" && break; sleep 0.05; done
    run_round tcpdump
    stop_pids INT "$td"
    ;;
  esac
}
# Odd rounds go nothing, agent, empty programs, empty device programs, tcpdump; even rounds the
# other way
# round, so a drift of the machine within a round falls on each side alike.
CGROOT=$(cgroup2_root) || exit 1
for r in $(seq "$ROUNDS"); do
  order="none agent hooks devhooks tcpdump"
  [ $((r % 2)) = 1 ] || order="tcpdump devhooks hooks agent none"
  for c in $order; do capture_round "$c" "$r"; done
done

# Each round's own ratio: a round the rest of the machine slowed weighs on both sides.
ratios() { # load capture [base] -> the rounds' "base / capture" ratios of the rates (base: none)
  paste -d' ' <(echo "${RATE["$1|${3:-none}"]}" | tr ' ' '\n' | grep .) <(echo "${RATE["$1|$2"]}" | tr ' ' '\n' | grep .) |
    awk '{printf "%.3f ", $1 / $2}'
}
cpu_ratios() { # load capture [base] -> the rounds' "capture / base" ratios of the CPU per op
  paste -d' ' <(echo "${CPU["$1|${3:-none}"]}" | tr ' ' '\n' | grep .) <(echo "${CPU["$1|$2"]}" | tr ' ' '\n' | grep .) |
    awk '{printf "%.3f ", $2 / $1}'
}
STABLE=""
declare -A CNAME=([agent]=agent [hooks]="empty programs on the agent's hooks"
  [devhooks]="empty programs on the device tracepoints" [tcpdump]=tcpdump)
declare -A UNIT=([udp]="datagrams/s" [udp-inline]="datagrams/s" [tcp]="MB/s" [dns]="queries/s")
MAX_DRIFT=${BENCH_MAX_DRIFT:-15} # percent, as scripts/bench-agent.sh
for w in $SLOADS; do
  none=$(echo "${RATE["$w|none"]}" | median)
  # Rounds without a capture that disagree mean the rest of the machine moved the load's
  # speed more than a capture could be measured against.
  drift=$(echo "${RATE["$w|none"]}" | tr ' ' '\n' | grep . | sort -g |
    awk -v m="$none" 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f", (hi - lo) / m * 100}')
  noisy=""
  [ "$drift" -le "$MAX_DRIFT" ] || [ "$ROUNDS" -lt 2 ] ||
    noisy="noisy: the rounds without a capture differ by ${drift}% (> ${MAX_DRIFT}%)"
  measure "dns.speed.$w.none" "$w load without a capture (${UNIT[$w]})" "$none" "${UNIT[$w]}" \
    "bench_dns_load $w ${SARGS[$w]} --duration $DUR, $ROUNDS rounds, median"
  row="| $w (${UNIT[$w]}) | $(printf "%.1f" "$none") ($(echo "${RATE["$w|none"]}" | range))"
  for c in agent hooks devhooks tcpdump; do
    if [ -z "${RATE["$w|$c"]:-}" ]; then
      row+=" | – | – | –"
      continue
    fi
    med=$(echo "${RATE["$w|$c"]}" | median)
    slow=$(ratios "$w" "$c" | median)
    op="" limit=""
    [ "$c" = agent ] && [ "$w" != dns ] && op=le limit=1.03
    why=""
    [ "$c" = agent ] && why=$TWHY
    why="${why}${why:+${noisy:+; }}$noisy"
    measure "dns.speed.$w.$c" "$w load under ${CNAME[$c]} (${UNIT[$w]})" "$med" "${UNIT[$w]}" \
      "bench_dns_load $w ${SARGS[$w]} --duration $DUR under ${CNAME[$c]}, $ROUNDS rounds alternated with no capture, median" "" "" "$why"
    measure "dns.speed.$w.slowdown.$c" "$w load: slowdown under ${CNAME[$c]} (no capture ÷ $c, median of rounds)" \
      "$slow" x "the rounds' ratios of the two above, median; spread $(ratios "$w" "$c" | range)" "$op" "$limit" "$why"
    measure "dns.cpu.$w.$c" "$w load under ${CNAME[$c]}: its CPU-ns per op ÷ without a capture (median of rounds)" \
      "$(cpu_ratios "$w" "$c" | median)" x \
      "bench_dns_load $w ${SARGS[$w]}: getrusage(RUSAGE_SELF) per op, same rounds; spread $(cpu_ratios "$w" "$c" | range)" \
      "" "" "$why"
    row+=" | $(printf "%.1f" "$med") | ${slow}x ($(ratios "$w" "$c" | range)) | $(cpu_ratios "$w" "$c" | median)x"
  done
  # What the agent's programs and process add over the hooks' dispatch alone, round by round.
  if [ -n "${RATE["$w|hooks"]:-}" ] && [ -n "${RATE["$w|agent"]:-}" ]; then
    why="${TWHY}${TWHY:+${noisy:+; }}$noisy"
    measure "dns.speed.$w.agent_over_hooks" "$w load: slowdown under the agent over the empty programs' (empty programs ÷ agent, median of rounds)" \
      "$(ratios "$w" agent hooks | median)" x "the same rounds; spread $(ratios "$w" agent hooks | range)" "" "" "$why"
    measure "dns.cpu.$w.agent_over_hooks" "$w load: CPU-ns per op under the agent ÷ under the empty programs (median of rounds)" \
      "$(cpu_ratios "$w" agent hooks | median)" x "the same rounds; spread $(cpu_ratios "$w" agent hooks | range)" "" "" "$why"
    row+=" | $(cpu_ratios "$w" agent hooks | median)x"
  else
    row+=" | –"
  fi
  STABLE+="$row |"$'\n'
done
if [ -z "$TCPDUMP" ]; then
  measure comparison.tcpdump.available "tcpdump installed for the comparison" 0 "" "command -v tcpdump" "" "" \
    "comparison tool missing: tcpdump not installed (make deps)"
fi

# ---------------------------------------------------------------- outputs
jq -s --argjson quick "$QUICK" '{section: "dns", quick: ($quick == 1), measurements: .}' "$RAW" >"$OUT/dns.json"
{
  echo "## DNS capture"
  echo
  echo "In-kernel cost, ns per program run ($ROUNDS rounds of ${DUR} s; range of the rounds, then medians):"
  echo
  echo "| packet | program | runs | ns/run, rounds | ns/run | empty program | program's own | target |"
  echo "|---|---|---:|---:|---:|---:|---:|---|"
  printf "%s" "$KTABLE"
  echo
  echo "Speed without a capture, under the agent, under an empty cgroup_skb program on each of its hooks, under an empty program on each of the device-level packet tracepoints (\`net_dev_queue\`, \`netif_receive_skb\`: the other hook that sees every packet without kprobes), under tcpdump (medians; slowdown = median of the rounds' ratios, their range in brackets; CPU per op = the load's CPU time per op under the capture ÷ without, median of the rounds; the last column is the agent's CPU per op ÷ the empty programs'):"
  echo
  echo "| load | none | agent | slowdown | CPU per op | empty programs | slowdown | CPU per op | empty device programs | slowdown | CPU per op | tcpdump | slowdown | CPU per op | agent ÷ empty |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf "%s" "$STABLE"
  echo
  [ -z "$KWHY$TWHY" ] || echo "Invalid: ${KWHY}${KWHY:+${TWHY:+; }}${TWHY}" && echo
} >"$OUT/dns.md"
rm -f "$RAW"
cat "$OUT/dns.md"
log "wrote $OUT/dns.json and $OUT/dns.md"
