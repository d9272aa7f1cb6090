#!/usr/bin/env bash
# Agent benchmarks (docs/performance.md):
#   1. in-kernel cost per BPF program (run_time_ns / run_cnt with
#      kernel.bpf_stats_enabled=1; for the agent also over an empty program
#      on the same hook, which is what the statistics cost) under a UDP connect loop, a TCP
#      connect/accept loop, an exec loop and a drop storm, and each loop's speed
#      without a tracer, under the agent, under bpftrace (the same tracepoints,
#      maps only) and under libbpf-tools (tcpstates, tcplife, execsnoop,
#      exitsnoop, output to /dev/null), all in this one run, in alternated
#      rounds (a tracer's speed: the median of the rounds' own ratios), and
#      the connect loops' speed under the agent without some event types
#      (what each costs);
#   2. the agent end to end (kernel -> NATS -> an independent subscriber):
#      zero-loss ceiling, loss curve, CPU-µs per event, peak RSS; and the
#      agent's on_event path alone (after decoding) with synthetic events.
# Every measurement carries a validity verdict: agent drops during an overhead
# run, an expected program not attached, a comparison tool missing or a queue
# not flushed by the end make it invalid, with the reason.
# Writes build/bench/agent.json and build/bench/agent.md. Needs root.
#
#   scripts/bench-agent.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

OUT=build/bench
B=build/bench
mkdir -p "$OUT"
RAW="$OUT/agent.jsonl" # one measurement per line, assembled at the end
: >"$RAW"
LOG="$OUT/agent.log"
: >"$LOG"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-agent: needs root (loads eBPF programs, sets kernel.bpf_stats_enabled)" >&2
  exit 1
fi
for bin in bin/ebpf-agent $B/bench_load $B/bench_sub $B/bench_agent_on_event $B/bench_empty_progs; do
  [ -x "$bin" ] || { echo "bench-agent: $bin missing: run 'make bench-bins'" >&2; exit 1; }
done
[ -e $B/empty_progs.bpf.o ] || { echo "bench-agent: $B/empty_progs.bpf.o missing: run 'make bench-bins'" >&2; exit 1; }
for tool in jq curl bpftool nats-server; do
  command -v "$tool" >/dev/null || { echo "bench-agent: $tool not installed (make deps)" >&2; exit 1; }
done

if [ $QUICK = 1 ]; then
  SPEED_ROUNDS=2 # rounds of speed runs (every tracer, every loop)
  DUR=0.3        # seconds per workload run (kernel part)
  STEP_DUR=0.5   # seconds per pipeline rate step
  RATES="50000 0"
  PIPE_EVENTS=100000
else
  SPEED_ROUNDS=5
  DUR=2
  STEP_DUR=4
  RATES="100000 200000 300000 400000 500000 0"
  PIPE_EVENTS=3000000
fi

# ---------------------------------------------------------------- cleanup
PIDS=()
BENCH=bench-agent
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
STATS_ORIG=$(sysctl -n kernel.bpf_stats_enabled)
MOUNTED_TRACEFS=0
cleanup() {
  local rc=$?
  set +e
  stop_pids TERM "${PIDS[@]:-}"
  sysctl -q -w kernel.bpf_stats_enabled="$STATS_ORIG" || true
  if [ $MOUNTED_TRACEFS = 1 ]; then umount /sys/kernel/tracing 2>/dev/null || true; fi
  rm -rf "${TMP:-}"
  exit $rc
}
trap cleanup EXIT
TMP=$(mktemp -d)

# measure ID NAME VALUE UNIT COMMAND [TARGET_OP TARGET [INVALID_REASON]]
#   TARGET_OP: le, lt, ge, gt or ""; INVALID_REASON: why the figure is not valid, "" = valid.
measure() {
  local id=$1 name=$2 value=$3 unit=$4 cmd=$5 op=${6:-} target=${7:-} why=${8:-}
  jq -cn --arg id "$id" --arg name "$name" --argjson value "$value" --arg unit "$unit" \
    --arg cmd "$cmd" --arg op "$op" --arg target "$target" --arg why "$why" '
    {id: $id, name: $name, value: $value, unit: $unit, command: $cmd}
    + (if $op == "" then {target: null, met: null}
       else ($target | tonumber) as $t
       | {target: ({le: "<= ", lt: "< ", ge: ">= ", gt: "> "}[$op] + $target),
          met: (if $op == "le" then $value <= $t elif $op == "lt" then $value < $t
                elif $op == "ge" then $value >= $t else $value > $t end)} end)
    + {valid: ($why == ""), invalid_reason: (if $why == "" then null else $why end)}' >>"$RAW"
}

fmt() { LC_ALL=C printf "%.${2:-2}f" "$1"; }

# ---------------------------------------------------------------- NATS + agent helpers
NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >>"$LOG" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
for _ in $(seq 200); do
  (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break
  kill -0 "$NATS_PID" 2>/dev/null || break
  sleep 0.05
done
if ! (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null; then
  # Another process may have taken the free port first: the whole run would be unflushed.
  echo "bench-agent: nats-server is not listening on 127.0.0.1:$NATS_PORT (see $LOG); run again" >&2
  exit 1
fi
start_listener "$NATS_URL"

agent_ticks() { awk '{print $14 + $15}' /proc/"$AGENT_PID"/stat; }
CLK_TCK=$(getconf CLK_TCK)

# run_time_ns and run_cnt of every loaded program: "id name run_time_ns run_cnt" lines
prog_stats() {
  bpftool prog show -j | jq -r '.[] | "\(.id) \(.name // "?") \(.run_time_ns // 0) \(.run_cnt // 0)"'
}

# ---------------------------------------------------------------- 1. in-kernel cost
T_START=$(date +%s.%N)
phase() { echo "bench-agent: $1 at +$(echo "$(date +%s.%N) $T_START" | awk '{printf "%.1f", $1 - $2}') s" | tee -a "$LOG" >&2; }

api_stats() { # -> "total_events kernel_drops agent_drops events_sent"
  curl -s -m 10 "$AGENT_API/api/stats" |
    jq -r '"\(.total_events) \(.kernel_drops) \(.bus.agent_drops) \(.bus.events_sent)"'
}

# Each tracer runs the same workloads in this one run: the agent, bpftrace
# doing comparable work in maps (tests its programs, not its output), and the
# libbpf-tools that report the same events (tcpstates for state changes,
# tcplife for each connection's end like our close events, execsnoop,
# exitsnoop), all output to /dev/null.
WORKLOADS="udp-connect tcp-connect exec drop"
TRACERS="agent bpftrace libbpf-tools"
# What each kind of event costs the connect loops: the agent again in the
# speed rounds, without the dns programs (a cgroup_skb run on every packet),
# then without close tracking too (the programs that follow each connection
# to its end); the difference to the agent with every type is their share.
# agent-no-dns-hooks is the agent without dns but with an empty program on
# each of the two hooks the dns programs use (scripts/bench-hooks.py): the
# kernel's dispatch into the hooks without the programs' work.
declare -A VARIANT_TYPES=(
  [agent-no-dns]=connection,accept,close,packet_drop,exec,exit
  [agent-no-dns-hooks]=connection,accept,close,packet_drop,exec,exit
  [agent-no-dns-close]=connection,accept,packet_drop,exec,exit
)
VARIANTS="agent-no-dns agent-no-dns-hooks agent-no-dns-close"
CGROOT=$(cgroup2_root) || CGROOT=""
VARIANT_LOADS="udp-connect tcp-connect"
declare -A NS CNT   # [tracer|workload|hook]: run_time_ns and run_cnt deltas
declare -A INVALID  # [tracer] or [tracer|workload]: why its figures are not valid
# The loops whose cost of each hook is reported. The first is the hook's own
# loop (measurement kernel.<tracer>.<hook>.ns_per_run); a hook every loop
# fires is also reported under the others listed (kernel.<tracer>.<hook>.<loop>.ns_per_run):
# the agent's sys_exit program serves UDP connects and accepts both, and runs
# on every syscall of the TCP loop too. The tcp-connect loop closes both ends
# with a RST, so it fires the close and reset hooks as well.
declare -A HOOK_LOAD=(
  [sys_exit_connect]="udp-connect tcp-connect" [inet_sock_set_state]=tcp-connect
  [sys_exit_accept]=tcp-connect [tcp_destroy_sock]=tcp-connect [tcp_send_reset]=tcp-connect
  [tcp_receive_reset]=tcp-connect [kfree_skb]=drop [sched_process_exec]=exec
  [sched_process_exit]=exec [sys_enter_execve]=exec [sys_exit_execve]=exec
  [io_uring_complete]=io-uring
)
# Loops run for the in-kernel cost of the agent alone: the io-uring loop (no-op requests) shows
# what every io_uring completion of the node pays for the agent's io_uring_complete program
# (the other tracers have no program there; its speed is not in the rounds).
AGENT_ONLY_LOADS="io-uring"
# The hooks each tracer must have attached for its figures to count.
declare -A EXPECTED=(
  [agent]="sys_exit_connect sys_exit_accept inet_sock_set_state tcp_destroy_sock tcp_send_reset tcp_receive_reset kfree_skb sched_process_exec sched_process_exit"
  [bpftrace]="sys_exit_connect sys_exit_accept inet_sock_set_state tcp_destroy_sock tcp_send_reset tcp_receive_reset kfree_skb sched_process_exec sched_process_exit"
  [libbpf-tools]="inet_sock_set_state sys_enter_execve sys_exit_execve sched_process_exit"
)

run_load() { # mode -> ops/s
  $B/bench_load "$1" --duration "$DUR" | jq -r .ops_per_sec
}

# invalid KEY REASON: appends a reason the figures of KEY (tracer or tracer|workload) are not valid.
invalid() {
  INVALID[$1]="${INVALID[$1]:+${INVALID[$1]}; }$2"
  echo "bench-agent: invalid ($1): $2" | tee -a "$LOG" >&2
}

# "id hook" of each attached program of the tracer whose pids are given, from
# bpftool's perf-event attachments (sys_exit_accept4 reported as sys_exit_accept).
perf_hooks() {
  bpftool perf -j 2>/dev/null | jq -r --arg pids " $* " 'arrays | .[] | objects | select(.tracepoint != null)
    | .pid as $p | select($pids | contains(" \($p) ")) | "\(.prog_id) \(.tracepoint | sub("accept4$"; "accept"))"'
}

# wait_hooks TRACER PID...: waits up to 60 s for every expected hook; writes $TMP/ids.
wait_hooks() {
  local tracer=$1 h p missing
  shift
  for _ in $(seq 600); do
    perf_hooks "$@" >"$TMP/ids"
    missing=""
    for h in ${EXPECTED[$tracer]}; do
      awk -v h="$h" '$2 == h {f = 1} END {exit !f}' "$TMP/ids" || missing+=" $h"
    done
    [ -z "$missing" ] && return 0
    for p in "$@"; do kill -0 "$p" 2>/dev/null || break 2; done
    sleep 0.1
  done
  invalid "$tracer" "missing program:$missing not attached"
}

# Waits until the agent has published (or counted as dropped) every event it
# read by now; an unflushed queue makes the run invalid.
agent_flushed() { # key
  local total kd ad sent target
  read -r target kd ad sent < <(api_stats)
  for _ in $(seq 100); do
    [ $((sent + ad)) -ge "$target" ] && return 0
    sleep 0.1
    read -r total kd ad sent < <(api_stats)
  done
  invalid "$1" "unflushed: $target events read, $sent published + $ad dropped after 10 s"
}

# Empty programs on the agent's hooks, attached after the agent's (the first
# program of a hook pays the cache lines a later one finds warm): their figure
# is what the statistics and the call cost by themselves. Appends "id
# empty_<hook>" lines to $TMP/ids (sys_exit serves both sys_exit_connect and
# sys_exit_accept); stop_empties detaches them.
EMPTY_PID=""
start_empties() {
  rm -f "$TMP/empty"
  $B/bench_empty_progs $B/empty_progs.bpf.o "$TMP/empty" 2>>"$LOG" &
  EMPTY_PID=$!
  PIDS+=("$EMPTY_PID")
  for _ in $(seq 200); do
    [ -e "$TMP/empty" ] && break
    kill -0 "$EMPTY_PID" 2>/dev/null || break
    sleep 0.05
  done
  grep -v ' empty_' "$TMP/ids" >"$TMP/ids.agent" || true
  awk '$2 == "sys_exit" {print $1, "empty_sys_exit_connect"; print $1, "empty_sys_exit_accept"; next}
       {print $1, "empty_" $2}' "$TMP/empty" 2>/dev/null | cat "$TMP/ids.agent" - >"$TMP/ids"
}
stop_empties() {
  [ -n "$EMPTY_PID" ] && stop_pids TERM "$EMPTY_PID"
  EMPTY_PID=""
}

# Runs every workload under TRACER (already started; its programs in $TMP/ids)
# with bpf_stats on (it adds two clock reads per program run): the cost per
# program. The speeds are measured apart, in rounds (below).
run_traced() {
  local tracer=$1 w id hook t0 c0 t1 c1 kd0 ad0 kd1 ad1 loads=$WORKLOADS
  [ "$tracer" != agent ] || loads+=" $AGENT_ONLY_LOADS"
  for w in $loads; do
    [ "$tracer" = agent ] && read -r _ kd0 ad0 _ < <(api_stats)
    [ "$tracer" = agent ] && start_empties
    sysctl -q -w kernel.bpf_stats_enabled=1
    prog_stats >"$TMP/before"
    run_load "$w" >/dev/null
    prog_stats >"$TMP/after"
    sysctl -q -w kernel.bpf_stats_enabled=0
    [ "$tracer" = agent ] && stop_empties
    if [ "$tracer" = agent ]; then
      read -r _ kd1 ad1 _ < <(api_stats)
      [ $((kd1 - kd0 + ad1 - ad0)) -eq 0 ] ||
        invalid "agent|$w" "agent drops: $((kd1 - kd0)) kernel, $((ad1 - ad0)) agent queue during the runs"
      agent_flushed "agent|$w"
    fi
    while read -r id hook; do
      t0=0 c0=0 t1=0 c1=0
      read -r t0 c0 < <(awk -v id="$id" '$1 == id {print $3, $4}' "$TMP/before") || true
      read -r t1 c1 < <(awk -v id="$id" '$1 == id {print $3, $4}' "$TMP/after") || true
      NS["$tracer|$w|$hook"]=$((${NS["$tracer|$w|$hook"]:-0} + ${t1:-0} - ${t0:-0}))
      CNT["$tracer|$w|$hook"]=$((${CNT["$tracer|$w|$hook"]:-0} + ${c1:-0} - ${c0:-0}))
    done <"$TMP/ids"
  done
}

# start_tracer T / stop_tracer T: the agent, bpftrace or libbpf-tools, its
# programs attached (their ids in $TMP/ids). A tracer that cannot run is
# marked invalid (once) and start_tracer fails.
start_tracer() {
  local t h bin
  case $1 in
  agent-*)
    start_agent EVENT_TYPES="${VARIANT_TYPES[$1]}"
    if [ "$1" = agent-no-dns-hooks ] && ! { [ -n "$CGROOT" ] && start_hooks "$CGROOT" "$TMP/hooks"; }; then
      [ -n "${INVALID[$1]:-}" ] || invalid "$1" "no empty programs: could not attach them to the cgroup v2 root"
      stop_agent
      return 1
    fi
    ;;
  agent)
    start_agent
    curl -s -m 10 "$AGENT_API/api/programs" |
      jq -r '.programs[] | select(.status == "attached" and .id > 0) | "\(.id) \(.name | sub("^tp_btf__"; ""))"' >"$TMP/ids"
    # io_uring's program counts under sys_exit's entry in /api/programs: its id from the kernel
    # (where the kernel has the tracepoint; the only agent running now).
    bpftool prog show -j |
      jq -r '.[] | select(.name == "tp_btf__io_uring_complete") | "\(.id) io_uring_complete"' >>"$TMP/ids"
    for h in ${EXPECTED[agent]}; do
      awk -v h="$h" '$2 == h {f = 1} END {exit !f}' "$TMP/ids" || invalid agent "missing program: $h not attached"
    done
    ;;
  bpftrace)
    if ! command -v bpftrace >/dev/null; then
      [ -n "${INVALID[bpftrace]:-}" ] || invalid bpftrace "comparison tool missing: bpftrace not installed (make deps)"
      return 1
    fi
    bpftrace "$TMP/equiv.bt" >/dev/null 2>>"$LOG" &
    BT_PID=$!
    PIDS+=("$BT_PID")
    wait_hooks bpftrace "$BT_PID"
    ;;
  libbpf-tools)
    TOOL_PIDS=()
    for t in "${TOOLS[@]}"; do
      bin=$(PATH=$PATH:/usr/sbin:/sbin command -v "$t" || true)
      if [ -z "$bin" ]; then
        [[ "${INVALID[libbpf-tools]:-}" == *"$t not installed"* ]] ||
          invalid libbpf-tools "comparison tool missing: $t not installed (make deps: libbpf-tools)"
        continue
      fi
      "$bin" >/dev/null 2>>"$LOG" &
      TOOL_PIDS+=($!)
      PIDS+=($!)
    done
    [ ${#TOOL_PIDS[@]} -gt 0 ] || return 1
    wait_hooks libbpf-tools "${TOOL_PIDS[@]}"
    ;;
  esac
}
stop_tracer() {
  case $1 in
  agent-no-dns-hooks)
    stop_agent
    stop_hooks
    ;;
  agent | agent-*) stop_agent ;;
  bpftrace) stop_pids TERM "$BT_PID" ;;
  libbpf-tools) stop_pids TERM "${TOOL_PIDS[@]}" ;;
  esac
}
TOOLS=(tcpstates tcplife execsnoop exitsnoop)

# bpftrace and libbpf-tools attach to tracepoints through tracefs.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing && MOUNTED_TRACEFS=1
fi
# The same tracepoints as the agent's, reading the same fields into maps (no output).
cat >"$TMP/equiv.bt" <<'BT'
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  @conn[comm, cgroup, args->family] = count();
  @last_conn[cpu] = (pid, uid, nsecs, args->sport, args->dport, args->saddr, args->daddr, args->newstate);
}
tracepoint:syscalls:sys_exit_connect /args->ret == 0/ {
  @uconn[comm, cgroup] = count();
  @last_uconn[cpu] = (pid, uid, nsecs, curtask->real_parent->tgid);
}
tracepoint:syscalls:sys_exit_accept4 /args->ret >= 0/ {
  @acc[comm, cgroup] = count();
  @last_acc[cpu] = (pid, uid, nsecs, curtask->real_parent->tgid);
}
tracepoint:skb:kfree_skb /args->reason > 1/ {
  @drop[args->reason, args->protocol] = count();
  @last_drop[cpu] = (args->location, nsecs);
}
tracepoint:tcp:tcp_destroy_sock {
  @close[comm, cgroup, args->family] = count();
  @last_close[cpu] = (nsecs, args->sport, args->dport, args->saddr, args->daddr);
}
tracepoint:tcp:tcp_send_reset { @rst_sent[args->state] = count(); }
tracepoint:tcp:tcp_receive_reset { @rst_recv[args->sport, args->dport] = count(); }
tracepoint:sched:sched_process_exec {
  @exec[comm, cgroup] = count();
  @last_exec[cpu] = (pid, uid, nsecs, str(args->filename));
}
tracepoint:sched:sched_process_exit {
  @exit[comm, cgroup] = count();
  @last_exit[cpu] = (pid, nsecs, curtask->exit_code);
}
END { clear(@conn); clear(@last_conn); clear(@uconn); clear(@last_uconn); clear(@acc);
      clear(@last_acc); clear(@drop); clear(@last_drop); clear(@exec); clear(@last_exec);
      clear(@exit); clear(@last_exit); clear(@close); clear(@last_close); clear(@rst_sent);
      clear(@rst_recv); }
BT

# Every tracer started is stopped again before the next measurement: one left
# running would weigh on every later run, with or without a tracer.
tracers_stopped() { # where
  local p
  for p in "${PIDS[@]}"; do
    if [ "$p" != "$NATS_PID" ] && [ "$p" != "$LISTENER_PID" ] && running_child "$p"; then
      echo "bench-agent: $(cat "/proc/$p/comm" 2>/dev/null) (pid $p) still runs after $1" | tee -a "$LOG" >&2
      exit 1
    fi
  done
}

for t in $TRACERS; do
  phase "$t: in-kernel cost"
  if start_tracer "$t"; then
    run_traced "$t"
    stop_tracer "$t"
  fi
  tracers_stopped "the $t in-kernel phase"
done
sysctl -q -w kernel.bpf_stats_enabled="$STATS_ORIG"

# Speeds, in rounds: each round runs every loop with no tracer, then under each
# tracer in turn (started and stopped within the round; every other round in
# the opposite order), statistics off. A tracer's speed is the median of the
# rounds' own ratios (its rate ÷ the same round's rate with no tracer), so a
# machine whose speed drifts over the run weighs on both sides of each ratio.
declare -A RATES # [capture|workload]: the rounds' rates, in order
speed_round() { # r
  local order="none $TRACERS $VARIANTS" c w loads kd0 ad0 kd1 ad1
  [ $(($1 % 2)) = 1 ] || order="$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')"
  for c in $order; do
    loads=$WORKLOADS
    [ -z "${VARIANT_TYPES[$c]:-}" ] || loads=$VARIANT_LOADS
    if [ "$c" != none ]; then
      start_tracer "$c" || continue
      [ "${c%%-*}" = agent ] && read -r _ kd0 ad0 _ < <(api_stats)
    fi
    for w in $loads; do RATES["$c|$w"]="${RATES["$c|$w"]:-} $(run_load "$w")"; done
    if [ "${c%%-*}" = agent ]; then
      read -r _ kd1 ad1 _ < <(api_stats)
      [ $((kd1 - kd0 + ad1 - ad0)) -eq 0 ] ||
        invalid "$c" "agent drops in speed round $1: $((kd1 - kd0)) kernel, $((ad1 - ad0)) agent queue"
    fi
    [ "$c" = none ] || stop_tracer "$c"
  done
}
for r in $(seq "$SPEED_ROUNDS"); do
  phase "speed round $r of $SPEED_ROUNDS"
  speed_round "$r"
  tracers_stopped "speed round $r"
done
if [ $MOUNTED_TRACEFS = 1 ]; then umount /sys/kernel/tracing 2>/dev/null && MOUNTED_TRACEFS=0; fi

# Why a tracer's figures under workload w are not valid ("" = valid).
reason() { local r="${INVALID[$1]:-}${INVALID[$1|$2]:+; }${INVALID[$1|$2]:-}"; echo "${r#; }"; }

declare -A LIMIT=(
  [sys_exit_connect]=300 [inet_sock_set_state]=300 [sys_exit_accept]=300 [kfree_skb]=300
  [tcp_destroy_sock]=300 [tcp_send_reset]=300 [tcp_receive_reset]=300
  [sched_process_exec]=1000 [sched_process_exit]=1000 [io_uring_complete]=300
)
for key in "${!CNT[@]}"; do
  IFS='|' read -r tracer w hook <<<"$key"
  [[ " ${HOOK_LOAD[$hook]:-} " == *" $w "* ]] && [ "${CNT[$key]}" -gt 0 ] || continue
  ns=$(echo "${NS[$key]} ${CNT[$key]}" | awk '{printf "%.1f", $1 / $2}')
  base="kernel.$tracer.$hook"
  [ "${HOOK_LOAD[$hook]%% *}" = "$w" ] || base="kernel.$tracer.$hook.$w"
  cmd="sysctl kernel.bpf_stats_enabled=1; $tracer; bench_load $w --duration $DUR; bpftool prog show (run_time_ns/run_cnt)"
  why=$(reason "$tracer" "$w")
  measure "$base.ns_per_run" "$tracer $hook: ns per run ($w loop, statistics included)" "$ns" ns "$cmd" "" "" "$why"
  [ "$tracer" = agent ] || continue
  # The agent's own cost: its figure minus the empty program's on the same hook and runs.
  ekey="agent|$w|empty_$hook"
  empty=0
  if [ "${CNT[$ekey]:-0}" -gt 0 ]; then
    empty=$(echo "${NS[$ekey]} ${CNT[$ekey]}" | awk '{printf "%.1f", $1 / $2}')
  else
    why="${why}${why:+; }no empty program measured on $hook"
  fi
  measure "$base.empty_ns_per_run" "empty program on $hook: ns per run ($w loop)" "$empty" ns \
    "$cmd; build/bench/bench_empty_progs (tests/bench/empty_progs.bpf.c) attached after the agent" "" "" "$why"
  measure "$base.own_ns_per_run" "agent $hook: ns per run over the empty program ($w loop)" \
    "$(echo "$ns $empty" | awk '{printf "%.1f", $1 - $2}')" ns \
    "$cmd; minus the empty program's figure on the same hook" le "${LIMIT[$hook]}" "$why"
done

for t in bpftrace libbpf-tools; do
  case "${INVALID[$t]:-}" in
  *"comparison tool missing"*)
    measure "comparison.$t.available" "$t installed for the comparison" 0 "" "command -v" "" "" "${INVALID[$t]}" ;;
  esac
done

MAX_DRIFT=${BENCH_MAX_DRIFT:-15} # percent
# The rounds' own ratios of two captures' rates (a ÷ b): "r1 r2 ...".
ratios() { # a b workload
  paste -d' ' <(echo "${RATES["$1|$3"]:-}" | tr ' ' '\n' | grep .) <(echo "${RATES["$2|$3"]:-}" | tr ' ' '\n' | grep .) |
    awk 'NF == 2 && $2 > 0 {printf "%.3f ", $1 / $2}'
}
# Why a median of rounds' ratios cannot be told from the machine's noise (""
# = it can): fewer than two rounds, or, without the highest and the lowest
# round (with three or more), the rounds still differ by more than MAX_DRIFT percent.
spread_why() { # "ratios"
  echo "$1" | tr ' ' '\n' | grep . | sort -g | awk -v max="$MAX_DRIFT" '
    {v[NR] = $1} END {
      if (NR < 2) { print "one round only"; exit }
      lo = NR >= 3 ? v[2] : v[1]; hi = NR >= 3 ? v[NR - 1] : v[NR]
      d = (hi - lo) / ((hi + lo) / 2) * 100
      if (d > max) printf "noisy: the ratios of the rounds differ by %.0f%% (> %d%%)", d, max }'
}
# join_why A B: two reasons a figure is not valid as one ("" when neither).
join_why() { echo "$1${1:+${2:+; }}$2"; }
# Each variant does a part of the agent's work (fewer types, or empty
# programs in place of the dns ones), so a loop cannot run slower under it
# than under the whole agent but by noise. When a variant's median is more than MAX_INVERSION percent
# below the agent's, the rounds' spread did not show noise that was there:
# marks the figures of both invalid for loop w.
MAX_INVERSION=${BENCH_MAX_INVERSION:-5} # percent
check_inversions() { # w
  local a v m d why
  a=$(ratios agent none "$1" | median)
  [ -n "$a" ] && [ "$a" != 0.000 ] || return 0
  for v in $VARIANTS; do
    [ -n "${RATES["$v|$1"]:-}" ] || continue
    m=$(ratios "$v" none "$1" | median)
    d=$(echo "$m $a" | awk '{printf "%.1f", ($2 - $1) / $2 * 100}')
    awk -v d="$d" -v max="$MAX_INVERSION" 'BEGIN {exit !(d > max)}' || continue
    why="inconsistent: the loop ran ${d}% slower under $v (${m}x), which does part of the agent's work, than under the whole agent (${a}x)"
    invalid "agent|$1" "$why"
    invalid "$v|$1" "$why"
  done
}
# speed_vs_none W C LABEL UNDER [OP LIMIT]: the median of the rounds' ratios of loop W's rate under
# capture C to its rate with no tracer; LABEL names C in the measurement, UNDER in its command.
speed_vs_none() {
  local rs why
  rs=$(ratios "$2" none "$1")
  why=$(join_why "$(reason "$2" "$1")" "$(spread_why "$rs")")
  measure "speed.$1.$2" "$1 loop speed under $3 / without a tracer (median of rounds)" \
    "$(echo "$rs" | median)" x \
    "bench_load $1 --duration $DUR under $4 ÷ with no tracer, in each of $SPEED_ROUNDS alternated rounds; median, spread $(echo "$rs" | range)" \
    "${5:-}" "${6:-}" "$why"
}
for w in $WORKLOADS; do
  [ -n "${RATES["none|$w"]:-}" ] || continue
  check_inversions "$w"
  measure "workload.$w.ops_per_sec" "$w loop, no tracer" "$(echo "${RATES["none|$w"]}" | median)" ops/s \
    "bench_load $w --duration $DUR, $SPEED_ROUNDS rounds, median"
  for t in $TRACERS; do
    [ -n "${RATES["$t|$w"]:-}" ] || continue
    op="" limit=""
    case $w in udp-connect | tcp-connect) [ "$t" = agent ] && op=ge limit=0.909 ;; esac
    speed_vs_none "$w" "$t" "$t" "$t (output to /dev/null)" "$op" "$limit"
    [ "$t" = agent ] && continue
    op=""
    case $w in udp-connect | tcp-connect) op=gt ;; esac
    rs=$(ratios agent "$t" "$w")
    why=$(reason agent "$w")
    r2=$(reason "$t" "$w")
    why=$(join_why "$(join_why "${why:+agent: $why}" "${r2:+$t: $r2}")" "$(spread_why "$rs")")
    measure "speed.$w.agent_over_$t" "$w loop speed under the agent / under $t (median of rounds)" \
      "$(echo "$rs" | median)" x \
      "the agent's rate ÷ $t's, in each round; median, spread $(echo "$rs" | range)" "$op" 1 "$why"
  done
  for v in $VARIANTS; do
    [ -n "${RATES["$v|$w"]:-}" ] || continue
    label="the agent with EVENT_TYPES=${VARIANT_TYPES[$v]}" under="EVENT_TYPES=${VARIANT_TYPES[$v]} ebpf-agent"
    if [ "$v" = agent-no-dns-hooks ]; then
      label+=" and empty programs on the dns hooks"
      under+=" and scripts/bench-hooks.py on the cgroup v2 root"
    fi
    speed_vs_none "$w" "$v" "$label" "$under"
  done
done

# ---------------------------------------------------------------- 2. agent pipeline
SUB_OUT="$TMP/sub.out"
rm -f "$TMP/sub.ready"
$B/bench_sub "$NATS_URL" 'ebpf.events.>' --ready "$TMP/sub.ready" --comm bench_load >"$SUB_OUT" &
SUB_PID=$!
PIDS+=("$SUB_PID")
for _ in $(seq 100); do [ -e "$TMP/sub.ready" ] && break; sleep 0.05; done
sub_counts() { # -> "events matched_connection matched_accept"
  local n
  n=$(wc -l <"$SUB_OUT")
  kill -USR1 "$SUB_PID"
  for _ in $(seq 100); do [ "$(wc -l <"$SUB_OUT")" -gt "$n" ] && break; sleep 0.02; done
  tail -n1 "$SUB_OUT" | jq -r '"\(.events) \(.matched_by_type.connection) \(.matched_by_type.accept)"'
}

# Waits until the agent has read at least MIN_TOTAL events from the ring (or
# lost the rest in the kernel), handed every one to NATS (or dropped it), and
# the subscriber has received all it sent. Gives up after ~10 s: then the
# queue is unflushed and UNFLUSHED says where.
UNFLUSHED=""
drain() {
  local min_total=${1:-0} total kd ad sent ev target
  UNFLUSHED=""
  for _ in $(seq 200); do
    read -r total kd ad sent < <(api_stats)
    [ $((total + kd)) -ge "$min_total" ] && break
    sleep 0.05
  done
  # Other processes keep adding events: wait for what was there, not for quiet.
  target=$total
  for _ in $(seq 100); do
    [ $((sent + ad)) -ge "$target" ] && break
    sleep 0.05
    read -r total kd ad sent < <(api_stats)
  done
  [ $((sent + ad)) -ge "$target" ] ||
    UNFLUSHED="unflushed: the agent read $target events, published $sent + dropped $ad"
  for _ in $(seq 200); do
    read -r ev _ _ < <(sub_counts)
    [ "$ev" -ge "$sent" ] && return 0
    sleep 0.05
  done
  UNFLUSHED="${UNFLUSHED:+$UNFLUSHED; }unflushed: the agent published $sent events, the subscriber received $ev"
}

phase "pipeline ladder"
start_agent
# Idle cost: the reader's 50 ms poll timer and the publisher's ticks (plus
# whatever the rest of the machine does meanwhile).
IDLE_S=$([ $QUICK = 1 ] && echo 1 || echo 3)
tk0=$(agent_ticks)
sleep "$IDLE_S"
tk1=$(agent_ticks)
measure pipeline.idle_cpu_percent "agent CPU while idle" \
  "$(echo "$tk0 $tk1 $CLK_TCK $IDLE_S" | awk '{printf "%.2f", ($2 - $1) / $3 / $4 * 100}')" "%" \
  "/proc/<agent>/stat utime+stime over ${IDLE_S} s"
ZERO_LOSS=0
ZL_CPU_US=""
MAX_DELIVERED=0
CURVE=""
step() { # mode rate threads
  local mode=$1 rate=$2 threads=$3
  local t0 kd0 ad0 s0 ev0 c0 a0 tk0 t1 kd1 ad1 s1 ev1 c1 a1 tk1 out ops udp tcp secs
  drain
  read -r t0 kd0 ad0 s0 < <(api_stats)
  read -r ev0 c0 a0 < <(sub_counts)
  tk0=$(agent_ticks)
  out=$($B/bench_load "$mode" --threads "$threads" --rate "$rate" --duration "$STEP_DUR")
  tk1=$(agent_ticks)
  ops=$(echo "$out" | jq -r .ops)
  udp=$(echo "$out" | jq -r .udp_connects)
  tcp=$(echo "$out" | jq -r .tcp_connects)
  drain $((t0 + udp + tcp + tcp))
  read -r t1 kd1 ad1 s1 < <(api_stats)
  read -r ev1 c1 a1 < <(sub_counts)
  secs=$(echo "$out" | jq -r .seconds)
  local offered delivered kd ad lost evs cpu_us
  evs=$((t1 - t0))
  kd=$((kd1 - kd0))
  ad=$((ad1 - ad0))
  # Delivered: this workload's connection and accept events the subscriber decoded.
  local want=$((udp + tcp + tcp)) got=$((c1 - c0 + a1 - a0))
  lost=$((want > got ? want - got : 0))
  offered=$(echo "$want $secs" | awk '{printf "%.0f", $1 / $2}')
  delivered=$(echo "$got $secs" | awk '{printf "%.0f", $1 / $2}')
  cpu_us=$(echo "$tk0 $tk1 $CLK_TCK $evs" | awk '{printf "%.3f", ($2 - $1) / $3 * 1e6 / ($4 > 0 ? $4 : 1)}')
  echo "step $mode rate=$rate threads=$threads: offered $offered/s delivered $delivered/s lost $lost kernel_drops $kd agent_drops $ad cpu_us/event $cpu_us" >>"$LOG"
  CURVE+="| $mode | ${rate/#0/max} | $threads | $offered | $delivered | $lost | $kd | $ad | $cpu_us |"$'\n'
  local why=${INVALID[agent]:-} id="pipeline.step.$mode.${rate/#0/max}" cmd
  why="${why}${why:+${UNFLUSHED:+; }}${UNFLUSHED}"
  cmd="bench_load $mode --threads $threads --rate $rate --duration $STEP_DUR; /api/stats; bench_sub counts"
  measure "$id.offered_per_sec" "pipeline $mode at target ${rate/#0/max}/s: offered events/s" \
    "$offered" events/s "$cmd" "" "" "$why"
  measure "$id.delivered_per_sec" "pipeline $mode at target ${rate/#0/max}/s: delivered events/s" \
    "$delivered" events/s "$cmd" "" "" "$why"
  measure "$id.lost" "pipeline $mode at target ${rate/#0/max}/s: events lost" \
    "$((lost + ad))" events "workload events - events decoded by bench_sub (+ agent drops)" "" "" "$why"
  measure "$id.kernel_drops" "pipeline $mode at target ${rate/#0/max}/s: kernel drops" "$kd" events "$cmd" "" "" "$why"
  measure "$id.agent_drops" "pipeline $mode at target ${rate/#0/max}/s: agent drops" "$ad" events "$cmd" "" "" "$why"
  measure "$id.cpu_us_per_event" "pipeline $mode at target ${rate/#0/max}/s: agent CPU-µs per event" \
    "$cpu_us" µs "$cmd; /proc/<agent>/stat" "" "" "$why"
  if [ -z "$UNFLUSHED" ] && [ "$kd" -eq 0 ] && [ "$ad" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$offered" -gt "$ZERO_LOSS" ]; then
    ZERO_LOSS=$offered
    ZL_CPU_US=$cpu_us
  fi
  [ "$delivered" -gt "$MAX_DELIVERED" ] && MAX_DELIVERED=$delivered
  return 0
}
for r in $RATES; do
  threads=1
  [ "$r" = 0 ] || [ "$r" -gt 250000 ] && threads=2
  step udp-connect "$r" "$threads"
done
# A realistic mix (96% UDP connects, 3% TCP connections, 1% execs) at a moderate rate.
if [ $QUICK = 1 ]; then step mix 20000 1; else step mix 100000 1; fi
HWM=$(awk '/VmHWM/ {print $2}' /proc/"$AGENT_PID"/status)
HIST=$(curl -s -m 10 "$AGENT_API/api/stats" | jq -r .history.events)
stop_agent
stop_pids TERM "$SUB_PID"

measure pipeline.zero_loss_events_per_sec "agent end to end: highest rate with zero loss (udp-connect)" \
  "$ZERO_LOSS" events/s "ladder of bench_load udp-connect --rate R; kernel drops, agent drops, bench_sub count" \
  ge 300000 "${INVALID[agent]:-}"
measure pipeline.max_delivered_per_sec "agent end to end: highest delivered rate (with loss)" \
  "$MAX_DELIVERED" events/s "same ladder, rate 0 = unlimited"
measure pipeline.cpu_us_per_event "agent CPU-µs per event at the zero-loss rate" "${ZL_CPU_US:-0}" µs \
  "/proc/<agent>/stat utime+stime delta / events" le 1.5 "${INVALID[agent]:-}"
measure pipeline.cpu_s_per_million "agent CPU-seconds per million events" \
  "$(echo "${ZL_CPU_US:-0}" | awk '{printf "%.3f", $1}')" s/M "same as above (µs/event = s/million)"
measure pipeline.peak_rss_mib "agent peak RSS (VmHWM), default limits, history holding $HIST events" \
  "$(echo "$HWM" | awk '{printf "%.1f", $1 / 1024}')" MiB "grep VmHWM /proc/<agent>/status" le 64

# Peak RSS of the whole agent with smaller limits (the default's is above),
# under the unlimited udp-connect load so the history fills and a small ring
# would overflow if it were too small. The ring's pages are mapped twice (libbpf
# maps the data area twice so no record wraps), so VmHWM counts RINGBUF_SIZE
# twice although the memory exists once.
if [ $QUICK = 0 ]; then
  for limits in "HISTORY_SIZE=100000" "RINGBUF_SIZE=8MiB" "RINGBUF_SIZE=4MiB" \
    "HISTORY_SIZE=100000 RINGBUF_SIZE=8MiB"; do
    # shellcheck disable=SC2086
    start_agent $limits
    $B/bench_load udp-connect --threads 2 --duration 3 >/dev/null
    sleep 1 # the agent reads the ring every 50 ms
    hwm=$(awk '/VmHWM/ {print $2}' /proc/"$AGENT_PID"/status)
    read -r hist kd < <(curl -s -m 10 "$AGENT_API/api/stats" | jq -r '"\(.history.events) \(.kernel_drops)"')
    stop_agent
    measure "pipeline.peak_rss_mib.${limits// /.}" "agent peak RSS with $limits (history holding $hist events)" \
      "$(echo "$hwm" | awk '{printf "%.1f", $1 / 1024}')" MiB "$limits ebpf-agent; bench_load udp-connect --threads 2 --duration 3" le 64
    measure "pipeline.kernel_drops.${limits// /.}" "kernel drops with $limits, unlimited udp-connect load" \
      "$kd" events "same run: /api/stats kernel_drops"
  done
fi

phase "on_event path"
# The agent's path after a record is read, decoded and attributed (id, store,
# publisher with a real NATS, stream), synthetic events, pinned to one CPU
# (that loop, the publisher and the NATS threads). Valid only when every event
# was published by the end, none dropped.
on_event_why() { # JSON line of bench_agent_on_event -> why it is not valid, or ""
  echo "$1" | jq -r '[if .agent_drops > 0 then "agent drops: \(.agent_drops) events" else empty end,
    if .flushed != true or .events_sent + .agent_drops != .events
    then "unflushed: \(.events) events, \(.events_sent) published, \(.agent_drops) dropped" else empty end]
    | join("; ")'
}
PIPE=$(NATS_URL="$NATS_URL" $B/bench_agent_on_event --events "$PIPE_EVENTS" --cpu 0)
echo "on_event: $PIPE" >>"$LOG"
why=$(on_event_why "$PIPE")
cmd="NATS_URL=... bench_agent_on_event --events $PIPE_EVENTS --cpu 0"
measure on_event.events_per_sec_per_core "on_event path (after decoding): events/s on one core" \
  "$(echo "$PIPE" | jq .events_per_sec)" events/s "$cmd" ge 1000000 "$why"
measure on_event.cpu_us_per_event "on_event path: process CPU-µs per event" \
  "$(echo "$PIPE" | jq .cpu_us_per_event)" µs "$cmd" le 1.5 "$why"
measure on_event.loop_thread_us_per_event "on_event path: CPU-µs per event of the calling thread" \
  "$(echo "$PIPE" | jq .capture_thread_us_per_event)" µs "$cmd" "" "" "$why"
measure on_event.peak_rss_mib "on_event path: peak RSS after $PIPE_EVENTS events (default HISTORY_SIZE)" \
  "$(echo "$PIPE" | jq '.peak_rss_kib / 1024 | . * 10 | round / 10')" MiB "$cmd" le 64 "$why"
if [ $QUICK = 0 ]; then
  for h in 50000 100000; do
    P2=$(NATS_URL="$NATS_URL" HISTORY_SIZE=$h $B/bench_agent_on_event --events 1000000 --cpu 0)
    measure "on_event.peak_rss_mib.history_$h" "on_event path: peak RSS with HISTORY_SIZE=$h" \
      "$(echo "$P2" | jq '.peak_rss_kib / 1024 | . * 10 | round / 10')" MiB \
      "HISTORY_SIZE=$h bench_agent_on_event --events 1000000 --cpu 0" le 64 "$(on_event_why "$P2")"
  done
fi

# ---------------------------------------------------------------- outputs
jq -s --argjson quick "$QUICK" '{section: "agent", quick: ($quick == 1), measurements: .}' \
  "$RAW" >"$OUT/agent.json"
{
  echo "## Agent: in-kernel cost and pipeline"
  echo
  echo "| Measurement | Value | Unit | Target | Met |"
  echo "|---|---:|---|---|---|"
  jq -r '.measurements[] | "| \(.name) | \(.value) | \(.unit) | \(.target // "") | \(if .met == null then "" elif .met then "yes" else "**no**" end) |"' \
    "$OUT/agent.json"
  echo
  echo "Loss curve (udp-connect ladder, then the mix):"
  echo
  echo "| Workload | Target rate | Threads | Offered ev/s | Delivered ev/s | Lost | Kernel drops | Agent drops | Agent CPU-µs/event |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf "%s" "$CURVE"
  echo
  echo "Commands: see build/bench/agent.json (\"command\" of each measurement); log in build/bench/agent.log."
} >"$OUT/agent.md"
rm -f "$RAW"
phase "done"
echo "bench-agent: wrote $OUT/agent.json and $OUT/agent.md"
