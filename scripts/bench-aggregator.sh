#!/usr/bin/env bash
# Transport and aggregator benchmarks (docs/performance.md, items 3 and 4):
#   3. the agent's publisher against a bare nats.c publisher sending the same
#      batches (rate ratio), and bytes per event on the wire for protobuf and
#      JSON at BATCH_SIZE 1, 10, 100, 1000 next to the seed's JSON event;
#   4. aggregator ingest (decode + index) per core in-process and from NATS
#      into a real aggregator (loss curve), bytes per stored event, query
#      latency p50/p99 over HTTP at 1M stored events on one replica and across
#      two replicas in one queue group, and HTTP requests/s with wrk.
# Writes build/bench/aggregator.json and build/bench/aggregator.md.
#
#   scripts/bench-aggregator.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

OUT=build/bench
B=build/bench
mkdir -p "$OUT"
RAW="$OUT/aggregator.jsonl" # one measurement per line, assembled at the end
: >"$RAW"
LOG="$OUT/aggregator.log"
: >"$LOG"

for bin in bin/ebpf-aggregator $B/bench_transport $B/bench_aggregator_ingest $B/bench_query \
  $B/bench_aggregator_nodes $B/bench_sub; do
  [ -x "$bin" ] || { echo "bench-aggregator: $bin missing: run 'make bench-bins'" >&2; exit 1; }
done
for tool in jq curl nats-server; do
  command -v "$tool" >/dev/null || { echo "bench-aggregator: $tool not installed (make deps)" >&2; exit 1; }
done
HAVE_WRK=1
command -v wrk >/dev/null || { HAVE_WRK=0; echo "bench-aggregator: wrk not installed (make deps); skipping requests/s" >&2; }

if [ $QUICK = 1 ]; then
  EVENTS=20000        # stored events for the query phase
  TRANSPORT_EVENTS=20000
  ROUNDS=1
  REQUESTS=10
  CURVE_RATES="0"
  CURVE_EVENTS=20000
  WRK_DUR=1
  NODE_ARGS="--steps 10,100 --batches 200"
  FLOW_EDGES=500
  FLOW_MINUTES=60
else
  EVENTS=1000000
  TRANSPORT_EVENTS=1000000
  ROUNDS=5
  REQUESTS=300
  CURVE_RATES="250000 500000 750000 1000000 0"
  CURVE_EVENTS=500000
  WRK_DUR=10
  NODE_ARGS="--steps 100,1000,10000 --batches 20000"
  FLOW_EDGES=10000
  FLOW_MINUTES=1440
fi
FILL_RATE=400000 # events/s used to fill the history for the query phase (below the loss point)

# ---------------------------------------------------------------- processes
PIDS=()
BENCH=bench-aggregator
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
cleanup() {
  set +e # a killed child's status must not fail the script
  stop_pids TERM "${PIDS[@]:-}"
  return 0
}
trap cleanup EXIT


wait_http() { # URL: until it answers, up to 10 s
  for _ in $(seq 100); do
    curl -sf -m 10 -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "bench-aggregator: $1 did not come up (see $LOG)" >&2
  exit 1
}

NATS_PORT=$(free_port)
NATS_URL="nats://127.0.0.1:$NATS_PORT"
# max_pending 256 MiB: the server's per-client buffer, so a burst is queued, not a slow consumer.
NATS_CONF=$(mktemp)
printf 'listen: 127.0.0.1:%s\nmax_pending: 268435456\nmax_payload: 8388608\n' "$NATS_PORT" >"$NATS_CONF"
nats-server -c "$NATS_CONF" >>"$LOG" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
  sleep 0.05
done

# start_aggregator QUEUE_GROUP HISTORY_SIZE -> sets AGG_PID, AGG_ADDR
start_aggregator() {
  local port
  port=$(free_port)
  NATS_URL=$NATS_URL QUEUE_GROUP=$1 CONTROL_SUBJECT="bench.control.$1" HISTORY_SIZE=$2 \
    HISTORY_MAX_AGE=24h LISTEN_ADDR="127.0.0.1:$port" SUBJECT_PREFIX=ebpf.events \
    bin/ebpf-aggregator >>"$LOG" 2>&1 &
  AGG_PID=$!
  PIDS+=("$AGG_PID")
  AGG_ADDR="127.0.0.1:$port"
  wait_http "http://$AGG_ADDR/health"
}

# run COMMAND...: runs a benchmark binary, stamps each JSON line with the command.
run() {
  local cmd="$*"
  echo "+ $cmd" >>"$LOG"
  "$@" 2>>"$LOG" | while IFS= read -r line; do
    echo "$line" | jq -c --arg cmd "$cmd" '(.value | type == "number") as $num
      | {id: .name, name: .name, value: (if $num then .value else 0 end), unit: .unit,
         command: $cmd, target: (.target // null), met: (if has("met") and $num then .met else null end),
         valid: $num, invalid_reason: (if $num then null else "no figure: the benchmark printed \(.value)" end)}' >>"$RAW"
  done
}

# measure ID VALUE UNIT COMMAND [le|ge TARGET]
measure() {
  local id=$1 value=$2 unit=$3 cmd=$4 op=${5:-} target=${6:-}
  jq -cn --arg id "$id" --argjson value "$value" --arg unit "$unit" --arg cmd "$cmd" \
    --arg op "$op" --arg target "$target" '
    {id: $id, name: $id, value: $value, unit: $unit, command: $cmd}
    + (if $op == "" then {target: null, met: null}
       else {target: ((if $op == "le" then "<= " else ">= " end) + $target),
             met: (if $op == "le" then $value <= ($target|tonumber)
                   else $value >= ($target|tonumber) end)} end)
    + {valid: true, invalid_reason: null}' >>"$RAW"
}

# ---------------------------------------------------------------- 3. transport
echo "bench-aggregator: transport" >&2
# --server-pid: CPU per event counts the nats-server's share too (the ratio's CPU bound).
# A listener, as the aggregators are: the agent's publisher holds batches no one hears.
start_listener "$NATS_URL"
run $B/bench_transport --nats "$NATS_URL" --events $TRANSPORT_EVENTS --rounds $ROUNDS \
  --server-pid "$NATS_PID"
stop_pids TERM "$LISTENER_PID"

# ---------------------------------------------------------------- 4. ingest
echo "bench-aggregator: ingest in-process" >&2
run $B/bench_aggregator_ingest --inproc --events $EVENTS
# The same without the transparent huge pages the aggregator asks jemalloc for
# (cmd/aggregator/malloc_conf.c), side by side: what they save in page faults and cost in memory.
run env MALLOC_CONF=thp:default,metadata_thp:disabled \
  $B/bench_aggregator_ingest --inproc --events $EVENTS --prefix aggregator.no_thp

echo "bench-aggregator: cost against the number of nodes" >&2
# shellcheck disable=SC2086 # NODE_ARGS is a list of options
run $B/bench_aggregator_nodes --inproc $NODE_ARGS --prefix aggregator_nodes.inproc
# shellcheck disable=SC2086
run $B/bench_aggregator_nodes --spawn $NODE_ARGS --prefix aggregator_nodes.spawn

echo "bench-aggregator: ingest from NATS (loss curve)" >&2
CURVE=""
start_aggregator bench-curve 100000000
for rate in $CURVE_RATES; do
  label=${rate}
  [ "$rate" = 0 ] && label=max
  tmp=$(mktemp)
  cmd="bench_aggregator_ingest --nats URL --http $AGG_ADDR --pid $AGG_PID --events $CURVE_EVENTS --rate $rate"
  echo "+ $cmd" >>"$LOG"
  $B/bench_aggregator_ingest --nats "$NATS_URL" --http "$AGG_ADDR" --pid "$AGG_PID" \
    --events $CURVE_EVENTS --rate "$rate" --prefix "aggregator.nats.rate_$label" >"$tmp" 2>>"$LOG" || true
  get() { jq -r --arg n "aggregator.nats.rate_$label.$1" 'select(.name == $n) | .value' "$tmp"; }
  CURVE+="| $label | $(get publish_rate) | $(get ingest_wall_rate) | $(get sent) | $(get lost) | $(get ingest_rate_per_core) |"$'\n'
  # Every step (the page's curve); the target applies to the unlimited one only.
  jq -c --arg cmd "$cmd" --arg rate "$rate" 'select(.name | test("ingest_rate_per_core|lost|sent|publish_rate|ingest_wall_rate"))
    | {id: .name, name: .name, value: .value, unit: .unit, command: $cmd,
       target: (if $rate == "0" then .target // null else null end),
       met: (if $rate == "0" and has("met") then .met else null end),
       valid: true, invalid_reason: null}' "$tmp" >>"$RAW"
  rm -f "$tmp"
done
stop_pids TERM "$AGG_PID"

# ---------------------------------------------------------------- 4. flows
# pkg/flows alone at the size issue targets name: 10,000 edges x 24 hours.
echo "bench-aggregator: flows ($FLOW_EDGES edges x $FLOW_MINUTES minutes)" >&2
run $B/bench_flows --edges $FLOW_EDGES --minutes $FLOW_MINUTES --queries 20

# ---------------------------------------------------------------- 4. one replica at EVENTS stored
echo "bench-aggregator: one replica, $EVENTS events" >&2
start_aggregator bench-one "$EVENTS"
A1_ADDR=$AGG_ADDR
A1_PID=$AGG_PID
run $B/bench_aggregator_ingest --nats "$NATS_URL" --http "$A1_ADDR" --pid "$A1_PID" \
  --events "$EVENTS" --rate $FILL_RATE --prefix aggregator.fill
run $B/bench_query --http "$A1_ADDR" --requests $REQUESTS --prefix aggregator.query.one_replica

SMALL="/api/events?type=exit&node=node-1&limit=10"
wrk_rate() { # ADDR ID
  local out rps
  out=$(wrk -t2 -c32 -d${WRK_DUR}s "http://$1$SMALL" 2>>"$LOG")
  echo "$out" >>"$LOG"
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  [ -n "$rps" ] && measure "$2" "$rps" "requests/s" "wrk -t2 -c32 -d${WRK_DUR}s 'http://ADDR$SMALL'" ge 20000
}
[ $HAVE_WRK = 1 ] && wrk_rate "$A1_ADDR" aggregator.http.one_replica.requests_per_s
stop_pids TERM "$A1_PID"

# ---------------------------------------------------------------- 4. two replicas, one queue group
echo "bench-aggregator: two replicas, $EVENTS events" >&2
start_aggregator bench-two "$EVENTS"
R1_ADDR=$AGG_ADDR
R1_PID=$AGG_PID
start_aggregator bench-two "$EVENTS"
R2_PID=$AGG_PID
# Replicas find each other by heartbeat: wait until the first sees two.
for _ in $(seq 100); do
  n=$(curl -s -m 10 "http://$R1_ADDR/api/events?limit=1" | jq -r '.replicas.expected // 0')
  [ "$n" = 2 ] && break
  sleep 0.1
done
run $B/bench_aggregator_ingest --nats "$NATS_URL" --http "$R1_ADDR" --pid "$R1_PID" --pid "$R2_PID" \
  --events "$EVENTS" --rate $FILL_RATE --prefix aggregator.fill_two_replicas
run $B/bench_query --http "$R1_ADDR" --requests $REQUESTS --prefix aggregator.query.two_replicas
[ $HAVE_WRK = 1 ] && wrk_rate "$R1_ADDR" aggregator.http.two_replicas.requests_per_s
stop_pids TERM "$R1_PID" "$R2_PID"
rm -f "$NATS_CONF"

# ---------------------------------------------------------------- outputs
jq -s --argjson quick "$QUICK" '{section: "aggregator", quick: ($quick == 1), measurements: .}' \
  "$RAW" >"$OUT/aggregator.json"
{
  echo "## Transport and aggregator"
  echo
  echo "| Measurement | Value | Unit | Target | Met |"
  echo "|---|---:|---|---|---|"
  jq -r '.measurements[] | "| \(.name) | \(.value) | \(.unit) | \(.target // "") | \(if .met == null then "" elif .met then "yes" else "**no**" end) |"' \
    "$OUT/aggregator.json"
  echo
  echo "Aggregator ingest loss curve (protobuf batches of 100 published to one aggregator; 0/max = as fast as possible):"
  echo
  echo "| Target rate ev/s | Published ev/s | Stored ev/s | Sent | Lost | Stored ev per aggregator CPU-s |"
  echo "|---|---:|---:|---:|---:|---:|"
  printf "%s" "$CURVE"
  echo
  echo "Commands: see build/bench/aggregator.json (\"command\" of each measurement); log in build/bench/aggregator.log."
} >"$OUT/aggregator.md"
rm -f "$RAW"
echo "bench-aggregator: wrote $OUT/aggregator.json and $OUT/aggregator.md"
