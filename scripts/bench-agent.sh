#!/usr/bin/env bash
# Agent benchmarks (docs/performance.md, items 1 and 2):
#   1. in-kernel cost per BPF program (run_time_ns / run_cnt with
#      kernel.bpf_stats_enabled=1) under a connect loop, an exec loop and a drop
#      storm, side by side with bpftrace on the same tracepoints and with no
#      tracer: the workload's slowdown ratio for each;
#   2. the agent pipeline end to end (kernel -> NATS -> an independent
#      subscriber): zero-loss ceiling, loss curve, CPU-µs per event, peak RSS;
#      and the user-space path alone with synthetic events.
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
for bin in bin/ebpf-agent $B/bench_load $B/bench_sub $B/bench_agent_on_event; do
  [ -x "$bin" ] || { echo "bench-agent: $bin missing: run 'make bench-bins'" >&2; exit 1; }
done
for tool in jq curl bpftool nats-server; do
  command -v "$tool" >/dev/null || { echo "bench-agent: $tool not installed (make deps)" >&2; exit 1; }
done

if [ $QUICK = 1 ]; then
  DUR=0.3        # seconds per workload run (kernel part)
  STEP_DUR=0.5   # seconds per pipeline rate step
  RATES="50000 0"
  PIPE_EVENTS=100000
else
  DUR=3
  STEP_DUR=4
  RATES="100000 200000 300000 400000 500000 0"
  PIPE_EVENTS=3000000
fi

# ---------------------------------------------------------------- cleanup
PIDS=()
STATS_ORIG=$(sysctl -n kernel.bpf_stats_enabled)
MOUNTED_TRACEFS=0
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  sysctl -q -w kernel.bpf_stats_enabled="$STATS_ORIG" || true
  if [ $MOUNTED_TRACEFS = 1 ]; then umount /sys/kernel/tracing 2>/dev/null || true; fi
  rm -rf "${TMP:-}"
  exit $rc
}
trap cleanup EXIT
TMP=$(mktemp -d)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# measure ID NAME VALUE UNIT COMMAND TARGET_OP TARGET  (TARGET_OP: le, ge, lt_ref, or "")
measure() {
  local id=$1 name=$2 value=$3 unit=$4 cmd=$5 op=${6:-} target=${7:-}
  jq -cn --arg id "$id" --arg name "$name" --argjson value "$value" --arg unit "$unit" \
    --arg cmd "$cmd" --arg op "$op" --arg target "$target" '
    {id: $id, name: $name, value: $value, unit: $unit, command: $cmd}
    + (if $op == "" then {target: null, met: null}
       else {target: ((if $op == "le" then "<= " elif $op == "lt" then "< " else ">= " end) + $target),
             met: (if $op == "le" then $value <= ($target|tonumber)
                   elif $op == "lt" then $value < ($target|tonumber)
                   else $value >= ($target|tonumber) end)} end)' >>"$RAW"
}

fmt() { LC_ALL=C printf "%.${2:-2}f" "$1"; }

# ---------------------------------------------------------------- NATS + agent helpers
NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >>"$LOG" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break
  sleep 0.05
done

AGENT_PID=""
AGENT_API=""
start_agent() { # extra env as arguments
  local port
  port=$(free_port)
  AGENT_API="http://127.0.0.1:$port"
  env NATS_URL="$NATS_URL" LISTEN_ADDR="127.0.0.1:$port" NODE_NAME=bench "$@" \
    bin/ebpf-agent >>"$LOG" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  for _ in $(seq 200); do
    curl -sf "$AGENT_API/ready" >/dev/null 2>&1 && return 0
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench-agent: the agent did not become ready (see $LOG)" >&2
  exit 1
}
stop_agent() {
  kill "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=""
}
agent_ticks() { awk '{print $14 + $15}' /proc/"$AGENT_PID"/stat; }
CLK_TCK=$(getconf CLK_TCK)

# run_time_ns and run_cnt of every loaded program: "id name run_time_ns run_cnt" lines
prog_stats() {
  bpftool prog show -j | jq -r '.[] | "\(.id) \(.name // "?") \(.run_time_ns // 0) \(.run_cnt // 0)"'
}

# ---------------------------------------------------------------- 1. in-kernel cost
T_START=$(date +%s.%N)
phase() { echo "bench-agent: $1 at +$(echo "$(date +%s.%N) $T_START" | awk '{printf "%.1f", $1 - $2}') s" | tee -a "$LOG" >&2; }

WORKLOADS="udp-connect tcp-connect exec drop"
declare -A OPS_NONE OPS_AGENT OPS_BPFTRACE

run_load() { # mode -> ops/s
  $B/bench_load "$1" --duration "$DUR" | jq -r .ops_per_sec
}

# Baseline with no tracer, before and after the traced runs (averaged: drift cancels).
for w in $WORKLOADS; do OPS_NONE[$w]=$(run_load "$w"); done

# The agent: per program, the cost delta under each workload.
phase "agent runs"
start_agent
declare -A AG_NS AG_CNT
PROGS_JSON=$(curl -s "$AGENT_API/api/programs")
for w in $WORKLOADS; do
  # Two runs: the cost per program with bpf_stats on (it adds two clock reads
  # per program run), then the workload's rate with them off, as deployed.
  sysctl -q -w kernel.bpf_stats_enabled=1
  prog_stats >"$TMP/before"
  run_load "$w" >/dev/null
  prog_stats >"$TMP/after"
  sysctl -q -w kernel.bpf_stats_enabled=0
  OPS_AGENT[$w]=$(run_load "$w")
  # Entries sharing one kernel program (UDP connect and accept on sys_exit) each get its cost.
  while read -r id name; do
    read -r t0 c0 < <(awk -v id="$id" '$1 == id {print $3, $4}' "$TMP/before") || true
    read -r t1 c1 < <(awk -v id="$id" '$1 == id {print $3, $4}' "$TMP/after") || true
    AG_NS["$w,$name"]=$((${t1:-0} - ${t0:-0}))
    AG_CNT["$w,$name"]=$((${c1:-0} - ${c0:-0}))
  done < <(echo "$PROGS_JSON" | jq -r '.programs[] | select(.id > 0) | "\(.id) \(.name)"')
done
stop_agent

# Which workload exercises which program (the one its events come from).
declare -A TRIGGER=(
  [tp_btf__sys_exit_connect]=udp-connect
  [tp_btf__inet_sock_set_state]=tcp-connect
  [tp_btf__sys_exit_accept]=tcp-connect
  [tp_btf__kfree_skb]=drop
  [tp_btf__sched_process_exec]=exec
  [tp_btf__sched_process_exit]=exec
)
declare -A LIMIT=(
  [tp_btf__sys_exit_connect]=300 [tp_btf__inet_sock_set_state]=300
  [tp_btf__sys_exit_accept]=300 [tp_btf__kfree_skb]=300
  [tp_btf__sched_process_exec]=1000 [tp_btf__sched_process_exit]=1000
)
for name in tp_btf__sys_exit_connect tp_btf__sys_exit_accept tp_btf__inet_sock_set_state \
  tp_btf__kfree_skb tp_btf__sched_process_exec tp_btf__sched_process_exit; do
  w=${TRIGGER[$name]}
  cnt=${AG_CNT["$w,$name"]:-0}
  [ "$cnt" -gt 0 ] || continue
  ns=$(echo "${AG_NS["$w,$name"]} $cnt" | awk '{printf "%.1f", $1 / $2}')
  measure "kernel.agent.$name.ns_per_run" "agent $name: ns per run ($w loop)" "$ns" ns \
    "sysctl kernel.bpf_stats_enabled=1; bench_load $w --duration $DUR; bpftool prog show id <id> (run_time_ns/run_cnt)" \
    le "${LIMIT[$name]}"
done

# bpftrace on the same tracepoints, doing comparable work per event: read the
# same fields and update a hash map (no output), no tracer-side user space.
if command -v bpftrace >/dev/null; then
  phase "bpftrace runs"
  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing && MOUNTED_TRACEFS=1
  fi
  cat >"$TMP/equiv.bt" <<'EOF'
BEGIN { printf("ready\n"); }
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
      clear(@exit); clear(@last_exit); }
EOF
  prog_stats >"$TMP/pre_bt"
  bpftrace "$TMP/equiv.bt" >"$TMP/bt.out" 2>&1 &
  BT_PID=$!
  PIDS+=("$BT_PID")
  for _ in $(seq 300); do
    grep -q "^ready" "$TMP/bt.out" 2>/dev/null && break
    kill -0 "$BT_PID" 2>/dev/null || break
    sleep 0.1
  done
  # bpftrace's programs: tracepoint programs that were not loaded before it started.
  bpftool prog show -j | jq -r '.[] | select(.type == "tracepoint") | "\(.id)"' |
    while read -r id; do grep -q "^$id " "$TMP/pre_bt" || echo "$id"; done >"$TMP/bt_ids"
  echo "bpftrace programs: $(tr '\n' ' ' <"$TMP/bt_ids")" >>"$LOG"
  declare -A BT_NS BT_CNT
  for w in $WORKLOADS; do
    sysctl -q -w kernel.bpf_stats_enabled=1
    prog_stats >"$TMP/before"
    run_load "$w" >/dev/null
    prog_stats >"$TMP/after"
    sysctl -q -w kernel.bpf_stats_enabled=0
    OPS_BPFTRACE[$w]=$(run_load "$w")
    while read -r id name t1 c1; do
      grep -qx "$id" "$TMP/bt_ids" || continue
      t0=0 c0=0
      read -r t0 c0 < <(awk -v id="$id" '$1 == id {print $3, $4}' "$TMP/before") || true
      BT_NS["$w,$name"]=$((${BT_NS["$w,$name"]:-0} + t1 - ${t0:-0}))
      BT_CNT["$w,$name"]=$((${BT_CNT["$w,$name"]:-0} + c1 - ${c0:-0}))
    done <"$TMP/after"
  done
  kill -INT "$BT_PID" 2>/dev/null || true
  wait "$BT_PID" 2>/dev/null || true
  # Program names are cut to 15 characters by the kernel.
  declare -A BT_TRIGGER=([sys_exit_connec]=udp-connect [inet_sock_set_s]=tcp-connect
    [sys_exit_accept]=tcp-connect [kfree_skb]=drop [sched_process_e]=exec)
  for key in "${!BT_CNT[@]}"; do
    w=${key%%,*}
    name=${key#*,}
    for hook in "${!BT_TRIGGER[@]}"; do
      if [ "$name" = "$hook" ] && [ "${BT_TRIGGER[$hook]}" = "$w" ] && [ "${BT_CNT[$key]}" -gt 0 ]; then
        ns=$(echo "${BT_NS[$key]} ${BT_CNT[$key]}" | awk '{printf "%.1f", $1 / $2}')
        label=$name
        [ "$name" = sched_process_e ] && label="sched_process_exec+exit" # same cut name
        measure "kernel.bpftrace.$label.ns_per_run" "bpftrace $label: ns per run ($w loop)" "$ns" ns \
          "bpftrace equiv.bt (count + last-record map update); bench_load $w --duration $DUR"
      fi
    done
  done
  if [ $MOUNTED_TRACEFS = 1 ]; then umount /sys/kernel/tracing 2>/dev/null && MOUNTED_TRACEFS=0; fi
else
  echo "bench-agent: bpftrace not installed (make deps): no bpftrace comparison" >&2
fi

phase "second baseline"
for w in $WORKLOADS; do
  second=$(run_load "$w")
  OPS_NONE[$w]=$(echo "${OPS_NONE[$w]} $second" | awk '{printf "%.1f", ($1 + $2) / 2}')
done

for w in $WORKLOADS; do
  measure "workload.$w.ops_per_sec" "$w loop, no tracer" "${OPS_NONE[$w]}" ops/s \
    "bench_load $w --duration $DUR"
  a=$(echo "${OPS_NONE[$w]} ${OPS_AGENT[$w]}" | awk '{printf "%.3f", $1 / $2}')
  if [ -n "${OPS_BPFTRACE[$w]:-}" ]; then
    b=$(echo "${OPS_NONE[$w]} ${OPS_BPFTRACE[$w]}" | awk '{printf "%.3f", $1 / $2}')
    measure "slowdown.$w.bpftrace" "$w loop slowdown with bpftrace" "$b" x \
      "ops/s no tracer / ops/s under bpftrace equiv.bt"
  else
    b=""
  fi
  case $w in
  udp-connect | tcp-connect)
    measure "slowdown.$w.agent" "$w loop slowdown with the agent" "$a" x \
      "ops/s no tracer / ops/s under ebpf-agent" le 1.10
    if [ -n "$b" ]; then
      measure "slowdown.$w.agent_vs_bpftrace" "$w: agent slowdown / bpftrace slowdown" \
        "$(echo "$a $b" | awk '{printf "%.3f", $1 / $2}')" x "ratio of the two above" lt 1
    fi
    ;;
  *)
    measure "slowdown.$w.agent" "$w loop slowdown with the agent" "$a" x \
      "ops/s no tracer / ops/s under ebpf-agent"
    ;;
  esac
done
sysctl -q -w kernel.bpf_stats_enabled="$STATS_ORIG"

# ---------------------------------------------------------------- 2. agent pipeline
api_stats() {
  curl -s "$AGENT_API/api/stats" |
    jq -r '"\(.total_events) \(.kernel_drops) \(.bus.agent_drops) \(.bus.events_sent)"'
}
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
# the subscriber has received all it sent. Gives up after ~10 s (then the
# missing events count as lost).
drain() {
  local min_total=${1:-0} total kd ad sent ev target
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
  for _ in $(seq 200); do
    read -r ev _ _ < <(sub_counts)
    [ "$ev" -ge "$sent" ] && break
    sleep 0.05
  done
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
  measure "pipeline.step.$mode.${rate/#0/max}.delivered_per_sec" \
    "pipeline $mode at target ${rate/#0/max}/s: delivered events/s (offered $offered/s)" "$delivered" events/s \
    "bench_load $mode --threads $threads --rate $rate --duration $STEP_DUR; bench_sub counts"
  measure "pipeline.step.$mode.${rate/#0/max}.lost" "pipeline $mode at target ${rate/#0/max}/s: events lost" \
    "$((lost + ad))" events "workload events - events decoded by bench_sub (+ agent drops)"
  if [ "$kd" -eq 0 ] && [ "$ad" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$offered" -gt "$ZERO_LOSS" ]; then
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
HIST=$(curl -s "$AGENT_API/api/stats" | jq -r .history.events)
stop_agent
kill "$SUB_PID" 2>/dev/null || true
wait "$SUB_PID" 2>/dev/null || true

measure pipeline.zero_loss_events_per_sec "agent end to end: highest rate with zero loss (udp-connect)" \
  "$ZERO_LOSS" events/s "ladder of bench_load udp-connect --rate R; kernel drops, agent drops, bench_sub count" \
  ge 300000
measure pipeline.max_delivered_per_sec "agent end to end: highest delivered rate (with loss)" \
  "$MAX_DELIVERED" events/s "same ladder, rate 0 = unlimited"
measure pipeline.cpu_us_per_event "agent CPU-µs per event at the zero-loss rate" "${ZL_CPU_US:-0}" µs \
  "/proc/<agent>/stat utime+stime delta / events" le 1.5
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
    read -r hist kd < <(curl -s "$AGENT_API/api/stats" | jq -r '"\(.history.events) \(.kernel_drops)"')
    stop_agent
    measure "pipeline.peak_rss_mib.${limits// /.}" "agent peak RSS with $limits (history holding $hist events)" \
      "$(echo "$hwm" | awk '{printf "%.1f", $1 / 1024}')" MiB "$limits ebpf-agent; bench_load udp-connect --threads 2 --duration 3" le 64
    measure "pipeline.kernel_drops.${limits// /.}" "kernel drops with $limits, unlimited udp-connect load" \
      "$kd" events "same run: /api/stats kernel_drops"
  done
fi

phase "user-space path"
# User-space path alone, pinned to one CPU (capture loop + publisher + NATS threads).
PIPE=$(NATS_URL="$NATS_URL" $B/bench_agent_on_event --events "$PIPE_EVENTS" --cpu 0)
echo "pipeline: $PIPE" >>"$LOG"
measure userspace.events_per_sec_per_core "user-space path: events/s on one core (synthetic events)" \
  "$(echo "$PIPE" | jq .events_per_sec)" events/s \
  "NATS_URL=... bench_agent_on_event --events $PIPE_EVENTS --cpu 0" ge 1000000
measure userspace.cpu_us_per_event "user-space path: process CPU-µs per event" \
  "$(echo "$PIPE" | jq .cpu_us_per_event)" µs "same run" le 1.5
measure userspace.capture_thread_us_per_event "user-space path: capture-thread CPU-µs per event" \
  "$(echo "$PIPE" | jq .capture_thread_us_per_event)" µs "same run"
measure userspace.peak_rss_mib "user-space path: peak RSS after $PIPE_EVENTS events (default HISTORY_SIZE)" \
  "$(echo "$PIPE" | jq '.peak_rss_kib / 1024 | . * 10 | round / 10')" MiB "same run" le 64
if [ $QUICK = 0 ]; then
  for h in 50000 100000; do
    P2=$(NATS_URL="$NATS_URL" HISTORY_SIZE=$h $B/bench_agent_on_event --events 1000000 --cpu 0)
    measure "userspace.peak_rss_mib.history_$h" "user-space path: peak RSS with HISTORY_SIZE=$h" \
      "$(echo "$P2" | jq '.peak_rss_kib / 1024 | . * 10 | round / 10')" MiB \
      "HISTORY_SIZE=$h bench_agent_on_event --events 1000000 --cpu 0" le 64
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
