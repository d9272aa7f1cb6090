#!/usr/bin/env bash
# Soak (`make soak`; bounded, not in CI): one real agent, one real aggregator
# and a real nats-server on a free loopback port, under a steady event load
# with process churn and pod churn, for SOAK_SECONDS. Samples both processes'
# RSS (VmRSS) every SOAK_SAMPLE seconds and, at the end, checks that
#   - RSS is flat after warm-up: the highest RSS of the last half is within
#     SOAK_RSS_TOLERANCE percent of the highest RSS of the first quarter;
#   - every counter adds up, stage by stage (the identities are printed with
#     their figures; see "Identities" below);
# then writes the figures between the soak markers of docs/performance.md
# (SOAK_DOCS; empty to skip) and SOAK_OUT (build/soak)/{soak.md,soak.json,samples.tsv}.
# Exits 1 when an identity fails or RSS grows past the tolerance. Needs root.
#
#   SOAK_SECONDS=1200 SOAK_RATE=50000 scripts/soak.sh
#
# Load: bench_load mix (per 100 operations 96 UDP connects, 3 TCP connects,
# 1 exec: ~1.04 events per operation) plus a packet-drop loop at
# SOAK_DROP_RATE (above the agent's per-CPU DROP_RATE_LIMIT, so some drops are
# suppressed and counted), together aimed at SOAK_RATE events/s; pod churn:
# every ~2 s a kubepods cgroup (systemd driver layout) appears with a process
# running an exec loop in it, and disappears, while a fake API server
# (scripts/soak-k8s-api.py) announces the pod and its deletion; the agent runs
# in Kubernetes mode against it.
#
# Identities (all at one quiet moment after the load stops: the agent's
# counters did not move across a 0.3 s window, so nothing is in its ring,
# open batch or queue; retried until such a moment, for up to 60 s):
#   (a) kernel:  sum over programs of records submitted (`programs[].events`)
#                = events the agent read from the ring (`total_events`).
#                Records the ring had no room for are `kernel_drops`, and drops
#                rate-limited away are `drops_suppressed`: both are counted
#                loss, never submitted.
#   (b) agent:   total_events = bus.events_sent + bus.agent_drops
#                (the agent filters nothing in user space: EVENT_TYPES
#                selects which programs are loaded).
#   (c) bus:     bus.events_sent = aggregator events for this node
#                + aggregator rejected_events + events in lost batches;
#                batch level: agent bus.sequence = aggregator batches for the
#                node + lost_batches, and lost_batches = bus.batches_dropped.
#   (d) stores:  events received = history.events + evicted (count + age)
#                (+ failed/duplicates), for the agent and the aggregator.
#   /metrics:    the agent's Prometheus counters equal /api/stats'.
# The agent also sees the rest of the machine, so the generator's counts are
# only a lower bound check: agent events of a type >= the generator's
# operations of that type, minus counted loss.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-1200}
SOAK_RATE=${SOAK_RATE:-50000}
SOAK_SAMPLE=${SOAK_SAMPLE:-5}
SOAK_RSS_TOLERANCE=${SOAK_RSS_TOLERANCE:-10}
SOAK_DROP_RATE=${SOAK_DROP_RATE:-3000}
SOAK_PODS=${SOAK_PODS:-1}
SOAK_DOCS=${SOAK_DOCS-docs/performance.md}
NODE=soak-node
B=build/bench
OUT=${SOAK_OUT:-build/soak}

if [ "$(id -u)" -ne 0 ]; then
  echo "soak: needs root (loads eBPF programs, creates cgroups)" >&2
  exit 1
fi
for bin in bin/ebpf-agent bin/ebpf-aggregator $B/bench_load; do
  [ -x "$bin" ] || { echo "soak: $bin missing: run 'make build bench-bins'" >&2; exit 1; }
done
for tool in jq curl nats-server python3 awk; do
  command -v "$tool" >/dev/null || { echo "soak: $tool not installed (make deps)" >&2; exit 1; }
done
if [ "$SOAK_SECONDS" -lt 20 ]; then
  echo "soak: SOAK_SECONDS must be at least 20" >&2
  exit 2
fi

mkdir -p "$OUT"
LOG=$OUT/soak.log
: >"$LOG"
SAMPLES=$OUT/samples.tsv
TMP=$(mktemp -d)

# ---------------------------------------------------------------- cleanup
PIDS=()
CG=""
cleanup() {
  local rc=$?
  set +e
  # Last started first: load and churn, then the agent, the aggregator, NATS.
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[$i]}
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  # A pod cgroup left by an interrupted churn loop: stop its processes (the
  # exec loop this script started there) by PID, then remove it.
  POD_REL=$(cat "$TMP/pod.rel" 2>/dev/null)
  if [ -n "$CG" ] && [ -n "$POD_REL" ] && [ -d "$CG/$POD_REL" ]; then
    for p in $(cat "$CG/$POD_REL/cgroup.procs" 2>/dev/null); do kill "$p" 2>/dev/null; done
    for _ in $(seq 30); do rmdir "$CG/$POD_REL" 2>/dev/null && break; sleep 0.1; done
    rmdir "$(dirname "$CG/$POD_REL")" 2>/dev/null
  fi
  # The kubepods parents, when this run created them and they are empty.
  if [ -n "$CG" ] && [ "${KUBEPODS_EXISTED:-1}" = 0 ]; then
    rmdir "$CG/kubepods.slice/kubepods-besteffort.slice" "$CG/kubepods.slice" 2>/dev/null
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "soak: $*" | tee -a "$LOG" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() { # url pid
  for _ in $(seq 300); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- NATS, aggregator, agent
NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break
  sleep 0.05
done

AGG_PORT=$(free_port)
AGG="http://127.0.0.1:$AGG_PORT"
NATS_URL="$NATS_URL" LISTEN_ADDR="127.0.0.1:$AGG_PORT" bin/ebpf-aggregator >"$OUT/aggregator.log" 2>&1 &
AGG_PID=$!
PIDS+=("$AGG_PID")
wait_http "$AGG/ready" "$AGG_PID" || { log "the aggregator did not become ready (see $OUT/aggregator.log)"; exit 1; }

# Kubernetes mode: the fake API server, and the cgroup v2 root for pods.
AGENT_ENV=(NATS_URL="$NATS_URL" NODE_NAME="$NODE" FLUSH_INTERVAL=100ms)
if [ "$SOAK_PODS" = 1 ]; then
  CG=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
  if [ -z "$CG" ] || [ ! -w "$CG" ]; then
    log "no writable cgroup v2 mount: pod churn off"
    SOAK_PODS=0
    CG=""
  fi
fi
if [ "$SOAK_PODS" = 1 ]; then
  KUBEPODS_EXISTED=$([ -d "$CG/kubepods.slice" ] && echo 1 || echo 0)
  python3 scripts/soak-k8s-api.py "$TMP/k8s.port" "$NODE" >"$OUT/k8s-api.log" 2>&1 &
  K8S_PID=$!
  PIDS+=("$K8S_PID")
  for _ in $(seq 100); do [ -s "$TMP/k8s.port" ] && break; sleep 0.05; done
  K8S="http://127.0.0.1:$(cat "$TMP/k8s.port")"
  echo soak-token >"$TMP/token"
  AGENT_ENV+=(DEPLOYMENT_MODE=kubernetes K8S_API_URL="$K8S" K8S_TOKEN_PATH="$TMP/token"
    CGROUP_ROOT="$CG" POD_NAME=ebpf-agent-soak POD_NAMESPACE=soak)
else
  AGENT_ENV+=(DEPLOYMENT_MODE=vm)
fi

AGENT_PORT=$(free_port)
AGENT="http://127.0.0.1:$AGENT_PORT"
env "${AGENT_ENV[@]}" LISTEN_ADDR="127.0.0.1:$AGENT_PORT" bin/ebpf-agent >"$OUT/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_http "$AGENT/ready" "$AGENT_PID" || { log "the agent did not become ready (see $OUT/agent.log)"; exit 1; }
for _ in $(seq 100); do
  [ "$(curl -s "$AGENT/api/stats" | jq -r .bus.connected)" = true ] && break
  sleep 0.1
done
log "nats $NATS_URL (pid $NATS_PID), aggregator $AGG (pid $AGG_PID), agent $AGENT (pid $AGENT_PID)$([ "$SOAK_PODS" = 1 ] && echo ", Kubernetes mode, API $K8S, cgroups $CG")"

# ---------------------------------------------------------------- load
# Events per mix operation: 0.96 x 1 (UDP) + 0.03 x 2 (TCP: connection +
# accept) + 0.01 x 2 (exec + exit) = 1.04.
MIX_OPS_RATE=$(awk -v r="$SOAK_RATE" -v d="$SOAK_DROP_RATE" 'BEGIN {m = (r - d) / 1.04; printf "%d", (m > 0 ? m : 0)}')
T_START=$(date +%s.%N)
A_START=$(curl -s "$AGENT/api/stats")
$B/bench_load mix --threads 2 --rate "$MIX_OPS_RATE" --duration "$SOAK_SECONDS" >"$TMP/mix.json" 2>>"$LOG" &
MIX_PID=$!
PIDS+=("$MIX_PID")
$B/bench_load drop --rate "$SOAK_DROP_RATE" --duration "$SOAK_SECONDS" >"$TMP/drop.json" 2>>"$LOG" &
DROP_PID=$!
PIDS+=("$DROP_PID")

# Pod churn: a pod cgroup (systemd driver: kubepods.slice/kubepods-besteffort.slice/
# kubepods-besteffort-pod<uid>.slice/cri-containerd-<cid>.scope), announced
# to the API server, a process in it running 2 s of execs, then gone.
pod_churn() {
  local n=0 uid suid cid rel
  local end=$(($(date +%s) + SOAK_SECONDS))
  while [ "$(date +%s)" -lt "$end" ]; do
    n=$((n + 1))
    uid=$(cat /proc/sys/kernel/random/uuid)
    suid=${uid//-/_}
    cid=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    rel="kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$suid.slice/cri-containerd-$cid.scope"
    curl -sf -X POST "$K8S/soak/add?uid=$uid&name=soak-$n&cid=$cid" >/dev/null || true
    mkdir -p "$CG/$rel" 2>/dev/null || { sleep 0.1; mkdir -p "$CG/$rel" || continue; }
    echo "$rel" >"$TMP/pod.rel"
    # The loop's own shell enters the cgroup only in its child.
    sh -c 'echo $$ >"$1/cgroup.procs" && exec "$2" exec --rate 25 --duration 2' _ "$CG/$rel" "$B/bench_load" \
      >>"$TMP/pods.jsonl" 2>>"$LOG" || true
    rmdir "$CG/$rel" 2>/dev/null || true
    rmdir "$(dirname "$CG/$rel")" 2>/dev/null || true
    curl -sf -X POST "$K8S/soak/delete?uid=$uid" >/dev/null || true
    echo "$n" >"$TMP/pods.count"
  done
}
: >"$TMP/pods.jsonl"
echo 0 >"$TMP/pods.count"
if [ "$SOAK_PODS" = 1 ]; then
  pod_churn &
  CHURN_PID=$!
  PIDS+=("$CHURN_PID")
fi

# ---------------------------------------------------------------- sampling
printf "t\tagent_rss_kib\taggregator_rss_kib\tnats_rss_kib\tagent_events\taggregator_events\n" >"$SAMPLES"
log "load: mix $MIX_OPS_RATE ops/s (2 threads) + drops $SOAK_DROP_RATE/s$([ "$SOAK_PODS" = 1 ] && echo " + pod churn") for $SOAK_SECONDS s; target $SOAK_RATE events/s"
next_report=60
while kill -0 "$MIX_PID" 2>/dev/null; do
  now=$(date +%s.%N)
  t=$(awk -v a="$now" -v b="$T_START" 'BEGIN {printf "%.1f", a - b}')
  ae=$(curl -s -m 2 "$AGENT/api/stats" | jq -r '.total_events // 0' 2>/dev/null || echo 0)
  ge=$(curl -s -m 2 "$AGG/api/stats" | jq -r '.total_events // 0' 2>/dev/null || echo 0)
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$t" "$(rss_kib "$AGENT_PID")" "$(rss_kib "$AGG_PID")" \
    "$(rss_kib "$NATS_PID")" "${ae:-0}" "${ge:-0}" >>"$SAMPLES"
  if awk -v t="$t" -v n="$next_report" 'BEGIN {exit !(t >= n)}'; then
    log "t=${t}s agent RSS $(rss_kib "$AGENT_PID") KiB, aggregator RSS $(rss_kib "$AGG_PID") KiB, agent events $ae, aggregator events $ge"
    next_report=$((next_report + 60))
  fi
  kill -0 "$AGENT_PID" 2>/dev/null || { log "the agent died (see $OUT/agent.log)"; exit 1; }
  kill -0 "$AGG_PID" 2>/dev/null || { log "the aggregator died (see $OUT/aggregator.log)"; exit 1; }
  sleep "$SOAK_SAMPLE"
done
wait "$MIX_PID" || true
wait "$DROP_PID" || true
if [ "$SOAK_PODS" = 1 ]; then wait "$CHURN_PID" || true; fi
T_END=$(date +%s.%N)
A_END=$(curl -s "$AGENT/api/stats")
ELAPSED=$(awk -v a="$T_END" -v b="$T_START" 'BEGIN {printf "%.1f", a - b}')
log "load done after $ELAPSED s; settling"

# ---------------------------------------------------------------- settle: one quiet moment
# One client on kept-alive connections: a curl per request would itself be
# an exec, an exit, a connection and an accept, so the agent would never be
# quiet. Quiet = the agent's moving counters (program records, events read,
# sent, dropped, sequence, kernel drops, suppressed) equal in three reads
# spanning >= 0.3 s: longer than the agent's ring poll (50 ms) and the soak's
# FLUSH_INTERVAL (100 ms), so at the middle read nothing waits in the ring or
# in a batch. The aggregator, read in between, may lag by a batch: a few
# quiet windows are tried before its figure is taken as final.
python3 - "$AGENT_PORT" "$AGG_PORT" "$TMP" >>"$LOG" 2>&1 <<'PY' || true
import http.client, json, sys, time
aport, gport, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = {}
def get(port, path):
    for attempt in range(3):
        c = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conns[port] = c
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.read().decode()
        except Exception:
            c.close()
            conns.pop(port, None)
    raise SystemExit("settle: GET %s failed" % path)
def key(s):
    j = json.loads(s)
    return (sum(p["events"] for p in j["programs"]), j["total_events"], j["bus"]["events_sent"],
            j["bus"]["agent_drops"], j["bus"]["sequence"], j["kernel_drops"], j["drops_suppressed"])
quiet = settled = 0
end = time.monotonic() + 60
a1 = m1 = g1 = None
while time.monotonic() < end:
    a0 = get(aport, "/api/stats")
    time.sleep(0.3)
    a1 = get(aport, "/api/stats")
    m1 = get(aport, "/metrics")
    g1 = get(gport, "/api/stats")
    a2 = get(aport, "/api/stats")
    if key(a0) == key(a1) == key(a2):
        quiet += 1
        a, g = json.loads(a1), json.loads(g1)
        node = next(iter(a["nodes"]))
        got = g["nodes"].get(node, {}).get("events", 0) + g["rejected_events_total"]
        if got == a["bus"]["events_sent"] or quiet >= 10:
            settled = 1
            break
    time.sleep(0.05)
for name, body in (("a1.json", a1), ("m1.txt", m1), ("g1.json", g1)):
    open(tmp + "/" + name, "w").write(body)
open(tmp + "/settle", "w").write("%d %d\n" % (quiet > 0, settled))
print("soak: settle: %d quiet windows, settled %d" % (quiet, settled))
PY
[ -s "$TMP/settle" ] || { log "could not read the final counters"; exit 1; }
read -r QUIET SETTLED <"$TMP/settle"
[ "$QUIET" = 1 ] || log "no quiet moment in 60 s: identities are checked on the last snapshot (moving counters)"
log "settled: quiet=$QUIET, aggregator caught up=$SETTLED"

# ---------------------------------------------------------------- figures
A=$TMP/a1.json
G=$TMP/g1.json
M=$TMP/m1.txt
metric_sum() { awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.0f", s}' "$M"; }
jq -s '{mix: .[0], drop: .[1]}' "$TMP/mix.json" "$TMP/drop.json" >"$TMP/gen.json"
POD_EXECS=$(jq -s '[.[].execs] | add // 0' "$TMP/pods.jsonl")
PODS_N=$(cat "$TMP/pods.count")

jq -n \
  --slurpfile a "$A" --slurpfile g "$G" --slurpfile a0 <(echo "$A_START") \
  --slurpfile ae <(echo "$A_END") --slurpfile gen "$TMP/gen.json" \
  --arg node "$NODE" --argjson elapsed "$ELAPSED" --argjson target "$SOAK_RATE" \
  --argjson seconds "$SOAK_SECONDS" --argjson quiet "$QUIET" --argjson settled "$SETTLED" \
  --argjson pod_execs "$POD_EXECS" --argjson pods "$PODS_N" --argjson pods_on "$SOAK_PODS" \
  --argjson m_events "$(metric_sum ebpf_agent_events_total)" \
  --argjson m_prog "$(metric_sum ebpf_agent_program_events_total)" \
  --argjson m_kd "$(metric_sum ebpf_agent_kernel_drops_total)" \
  --argjson m_sup "$(metric_sum ebpf_agent_drops_suppressed_total)" \
  --argjson m_sent "$(metric_sum ebpf_agent_bus_events_sent_total)" \
  --argjson m_adrop "$(metric_sum ebpf_agent_bus_dropped_events_total)" \
  --argjson m_bdrop "$(metric_sum ebpf_agent_bus_dropped_batches_total)" \
  --argjson m_evict "$(metric_sum ebpf_agent_history_evicted_total)" '
  $a[0] as $a | $g[0] as $g | $a0[0] as $a0 | $ae[0] as $ae | $gen[0] as $gen
  | ($g.nodes[$node] // {events: 0, batches: 0, lost_batches: 0}) as $gn
  | ([$a.programs[].events] | add) as $prog
  | {
    # kernel
    program_records: $prog, agent_events: $a.total_events, kernel_drops: $a.kernel_drops,
    drops_suppressed: $a.drops_suppressed, events_by_type: $a.events_by_type,
    # agent
    events_sent: $a.bus.events_sent, agent_drops: $a.bus.agent_drops,
    batches_sent: $a.bus.batches_sent, batches_dropped: $a.bus.batches_dropped,
    sequence: $a.bus.sequence, encode_failed: $a.bus.encode_failed,
    publish_errors: $a.bus.publish_errors, reconnects: $a.bus.reconnects,
    agent_history: $a.history, stream_dropped: ($a.stream.dropped + $a.stream.publish_dropped),
    kubernetes: $a.kubernetes,
    # aggregator
    aggregator_events: $gn.events, aggregator_batches: $gn.batches, lost_batches: $gn.lost_batches,
    aggregator_node_agent_drops: $gn.agent_drops, aggregator_node_kernel_drops: $gn.kernel_drops,
    rejected_total: $g.rejected_total, rejected_events_total: $g.rejected_events_total,
    bus_dropped: $g.bus_dropped, aggregator_total_events: $g.total_events,
    aggregator_history: $g.history, aggregator_store_failed: $g.store_failed,
    # generator
    generator: {
      seconds: $gen.mix.seconds, mix_ops: $gen.mix.ops, udp_connects: $gen.mix.udp_connects,
      tcp_connects: $gen.mix.tcp_connects, execs: ($gen.mix.execs + $pod_execs),
      drops: $gen.drop.ops, pods: $pods, pod_execs: $pod_execs,
      events: ($gen.mix.udp_connects + 2 * $gen.mix.tcp_connects + 2 * ($gen.mix.execs + $pod_execs) + $gen.drop.ops)
    },
    load_window: {
      seconds: $elapsed,
      agent_events: ($ae.total_events - $a0.total_events),
      agent_kernel_drops: ($ae.kernel_drops - $a0.kernel_drops),
      agent_suppressed: ($ae.drops_suppressed - $a0.drops_suppressed)
    },
    quiet: ($quiet == 1), settled: ($settled == 1), target_rate: $target, soak_seconds: $seconds,
    pods_on: ($pods_on == 1),
    metrics: {events: $m_events, program_records: $m_prog, kernel_drops: $m_kd, suppressed: $m_sup,
              events_sent: $m_sent, agent_drops: $m_adrop, batches_dropped: $m_bdrop, evicted: $m_evict}
  }
  | .generator.events_per_sec = (.generator.events / .generator.seconds)
  # Over the generator duration: the window also holds up to one
  # sampling interval after the load ended.
  | .agent_events_per_sec = ((.load_window.agent_events + .load_window.agent_kernel_drops + .load_window.agent_suppressed) / .generator.seconds)
  | .identities = [
      {id: "a", stage: "kernel", text: "program records submitted = events read by the agent",
       lhs: .program_records, rhs: .agent_events},
      {id: "b", stage: "agent", text: "events read = events published + agent drops",
       lhs: .agent_events, rhs: (.events_sent + .agent_drops)},
      {id: "c", stage: "bus", text: "events published = aggregator events for the node + rejected events (lost batches: 0 expected, none counted)",
       lhs: .events_sent, rhs: (.aggregator_events + .rejected_events_total), extra_ok: (.lost_batches == 0)},
      {id: "c2", stage: "bus", text: "agent batch sequence = aggregator batches for the node + lost batches; lost batches = agent batches dropped",
       lhs: .sequence, rhs: (.aggregator_batches + .lost_batches), extra_ok: (.lost_batches == .batches_dropped)},
      {id: "c3", stage: "bus", text: "agent drops as the aggregator saw them (batch headers) = the agent'"'"'s",
       lhs: .agent_drops, rhs: .aggregator_node_agent_drops},
      {id: "d1", stage: "agent store", text: "events read = history + evicted (count, age) + failed",
       lhs: .agent_events, rhs: (.agent_history.events + .agent_history.evicted_count + .agent_history.evicted_age + .agent_history.failed)},
      {id: "d2", stage: "aggregator store", text: "events received = history + evicted (count, age) + duplicates + failed",
       lhs: .aggregator_total_events, rhs: (.aggregator_history.events + .aggregator_history.evicted_count + .aggregator_history.evicted_age + .aggregator_history.duplicates + .aggregator_store_failed)},
      {id: "m", stage: "/metrics", text: "agent /metrics counters = /api/stats (events, records, kernel drops, suppressed, sent, agent drops, evicted)",
       lhs: [.metrics.events, .metrics.program_records, .metrics.kernel_drops, .metrics.suppressed, .metrics.events_sent, .metrics.agent_drops, .metrics.evicted],
       rhs: [.agent_events, .program_records, .kernel_drops, .drops_suppressed, .events_sent, .agent_drops, (.agent_history.evicted_count + .agent_history.evicted_age)]}
    ]
  | .identities |= map(.held = (.lhs == .rhs and (.extra_ok // true)))
  | .lower_bounds = [
      {type: "connection", agent: .events_by_type.connection, generator: (.generator.udp_connects + .generator.tcp_connects)},
      {type: "accept", agent: .events_by_type.accept, generator: .generator.tcp_connects},
      {type: "exec", agent: .events_by_type.exec, generator: .generator.execs},
      {type: "exit", agent: .events_by_type.exit, generator: .generator.execs},
      {type: "packet_drop (+ suppressed)", agent: (.events_by_type.packet_drop + .drops_suppressed), generator: .generator.drops}
    ] + (if .pods_on then [
      {type: "events in pods (agent pod lookups) vs exec + exit of the execs run in pods", agent: .kubernetes.pod_lookups, generator: (2 * .generator.pod_execs)}
    ] else [] end)
  | (.kernel_drops + .agent_drops) as $loss
  | .lower_bounds |= map(.held = (.agent + $loss >= .generator))
  ' >"$TMP/figures.json"

# RSS: warm-up = highest sample of the first quarter; end = highest of the last half.
read -r AG_WARM AG_END GG_WARM GG_END NS NW NE < <(awk -F'\t' -v T="$SOAK_SECONDS" '
  NR > 1 { if ($1 <= T / 4) { if ($2 > aw) aw = $2; if ($3 > gw) gw = $3; if ($4 > nw) nw = $4 }
           if ($1 >= T / 2) { if ($2 > ae) ae = $2; if ($3 > ge) ge = $3; if ($4 > ne) ne = $4 }
           n++ }
  END { print aw + 0, ae + 0, gw + 0, ge + 0, n + 0, nw + 0, ne + 0 }' "$SAMPLES")
jq --argjson aw "$AG_WARM" --argjson ae "$AG_END" --argjson gw "$GG_WARM" --argjson ge "$GG_END" \
  --argjson tol "$SOAK_RSS_TOLERANCE" --argjson n "$NS" --argjson sample "$SOAK_SAMPLE" '
  .rss = {samples: $n, sample_seconds: $sample, tolerance_percent: $tol,
          agent: {warm_kib: $aw, end_kib: $ae, growth_percent: (if $aw > 0 then ($ae - $aw) * 100 / $aw else null end)},
          aggregator: {warm_kib: $gw, end_kib: $ge, growth_percent: (if $gw > 0 then ($ge - $gw) * 100 / $gw else null end)}}
  | .rss.agent.held = ($aw > 0 and $ae <= $aw * (1 + $tol / 100))
  | .rss.aggregator.held = ($gw > 0 and $ge <= $gw * (1 + $tol / 100))
  | .generated_at = (now | strftime("%Y-%m-%dT%H:%M:%SZ"))
  | .ok = (all(.identities[]; .held) and all(.lower_bounds[]; .held) and .rss.agent.held and .rss.aggregator.held)
  ' "$TMP/figures.json" >"$OUT/soak.json"

# ---------------------------------------------------------------- report
F=$OUT/soak.json
yn() { if [ "$1" = true ]; then echo yes; else echo "**no**"; fi; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
num() { LC_ALL=C printf "%'d" "$1" 2>/dev/null || echo "$1"; }
{
  echo "<!-- soak:begin (written by scripts/soak.sh; do not edit by hand) -->"
  echo
  echo "$(jq -r .generated_at "$F"), $(nproc) vCPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r):"
  echo "\`SOAK_SECONDS=$SOAK_SECONDS SOAK_RATE=$SOAK_RATE scripts/soak.sh\` at niceness $(nice), load for $(jq -r .generator.seconds "$F") s."
  echo
  echo "| figure | value |"
  echo "|---|---|"
  echo "| target rate | $(num "$SOAK_RATE") events/s |"
  echo "| achieved: generator | $(num "$(jq -r '.generator.events_per_sec | floor' "$F")") events/s ($(num "$(jq -r .generator.events "$F")") events: $(num "$(jq -r .generator.udp_connects "$F")") UDP connects, $(num "$(jq -r .generator.tcp_connects "$F")") TCP connects, $(num "$(jq -r .generator.execs "$F")") execs, $(num "$(jq -r .generator.drops "$F")") packet drops) |"
  echo "| achieved: agent (all of the machine's events, incl. counted loss, over the same seconds) | $(num "$(jq -r '.agent_events_per_sec | floor' "$F")") events/s |"
  jq -r 'if .generator.events_per_sec < 0.95 * .target_rate then "| target reached | **no**: the generator achieved \(.generator.events_per_sec * 100 / .target_rate | floor)% of it on this machine |" else "| target reached | yes (within 5%) |" end' "$F"
  if [ "$SOAK_PODS" = 1 ]; then
    echo "| pod churn | $(jq -r .generator.pods "$F") pods created and deleted (kubepods cgroups + fake API server); agent: $(jq -r '.kubernetes | "\(.pod_lookups) pod lookups, \(.pod_misses) misses, \(.pods_deleted) pods deleted (tombstones), \(.pods_evicted) evicted, \(.cgroup_walks) cgroup walks, \(.cgroup_evictions) cgroup evictions, \(.relists) relists, \(.api_errors) API errors"' "$F") |"
  else
    echo "| pod churn | not covered (SOAK_PODS=0 or no writable cgroup v2) |"
  fi
  echo "| agent RSS | warm-up $(mib "$AG_WARM") MiB, end $(mib "$AG_END") MiB ($(jq -r '.rss.agent.growth_percent | . * 10 | round / 10' "$F")%; flat within +$SOAK_RSS_TOLERANCE%: $(yn "$(jq -r .rss.agent.held "$F")")) |"
  echo "| aggregator RSS | warm-up $(mib "$GG_WARM") MiB, end $(mib "$GG_END") MiB ($(jq -r '.rss.aggregator.growth_percent | . * 10 | round / 10' "$F")%; flat within +$SOAK_RSS_TOLERANCE%: $(yn "$(jq -r .rss.aggregator.held "$F")")) |"
  echo "| nats-server RSS (not checked) | warm-up $(mib "$NW") MiB, end $(mib "$NE") MiB |"
  echo
  echo "RSS: warm-up = highest VmRSS sampled in the first quarter, end = highest in the last half ($(jq -r .rss.samples "$F") samples, every $SOAK_SAMPLE s; \`$SAMPLES\`)."
  echo
  echo "Counters (at one quiet moment after the load: $(if [ "$(jq -r .quiet "$F")" = true ]; then echo "found"; else echo "**none found, moving counters**"; fi)):"
  echo
  echo "| counter | value |"
  echo "|---|---:|"
  jq -r '
    ["program records submitted (kernel)", .program_records],
    ["kernel drops (ring buffer full)", .kernel_drops],
    ["packet drops suppressed (rate limit)", .drops_suppressed],
    ["events read by the agent", .agent_events],
    ["events published", .events_sent],
    ["agent drops (outage queue, encoding)", .agent_drops],
    ["batches published / dropped / sequence", "\(.batches_sent) / \(.batches_dropped) / \(.sequence)"],
    ["agent history evicted (count, age)", "\(.agent_history.evicted_count), \(.agent_history.evicted_age)"],
    ["aggregator events for the node", .aggregator_events],
    ["aggregator batches for the node / lost batches", "\(.aggregator_batches) / \(.lost_batches)"],
    ["aggregator rejected messages / rejected events / slow-consumer drops", "\(.rejected_total) / \(.rejected_events_total) / \(.bus_dropped)"],
    ["aggregator history evicted (count, age) / duplicates", "\(.aggregator_history.evicted_count), \(.aggregator_history.evicted_age) / \(.aggregator_history.duplicates)"]
    | "| \(.[0]) | \(.[1]) |"' "$F"
  echo
  echo "| identity | left | right | held |"
  echo "|---|---:|---:|---|"
  jq -r '.identities[] | "| (\(.id)) \(.stage): \(.text) | \(.lhs | if type == "array" then map(tostring) | join(", ") else tostring end) | \(.rhs | if type == "array" then map(tostring) | join(", ") else tostring end) | \(if .held then "yes" else "**no**" end) |"' "$F"
  echo
  echo "Lower bounds (the agent also sees the rest of the machine): agent events of a type + counted loss >= the generator's operations."
  echo
  echo "| type | agent | generator | held |"
  echo "|---|---:|---:|---|"
  jq -r '.lower_bounds[] | "| \(.type) | \(.agent) | \(.generator) | \(if .held then "yes" else "**no**" end) |"' "$F"
  echo
  echo "Result: $(if [ "$(jq -r .ok "$F")" = true ]; then echo "**pass**"; else echo "**fail**"; fi)."
  echo
  echo "<!-- soak:end -->"
} >"$OUT/soak.md"
cat "$OUT/soak.md"

if [ -n "$SOAK_DOCS" ] && [ -f "$SOAK_DOCS" ]; then
  if scripts/bench-render.py --splice soak "$OUT/soak.md" "$SOAK_DOCS"; then
    log "wrote the figures into $SOAK_DOCS"
  else
    log "$SOAK_DOCS has no soak markers: not updated"
  fi
fi

if [ "$(jq -r .ok "$F")" = true ]; then
  log "pass"
  exit 0
fi
log "FAIL: $(jq -r '[(.identities[] | select(.held | not) | "identity (\(.id))"), (.lower_bounds[] | select(.held | not) | "lower bound \(.type)"), (if .rss.agent.held then empty else "agent RSS" end), (if .rss.aggregator.held then empty else "aggregator RSS" end)] | join(", ")' "$F")"
exit 1
