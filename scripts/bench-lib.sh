# Sourced by the scripts/bench-*.sh: the helpers they share.
# The caller sets BENCH (its name, for messages), LOG and the PIDS array
# (what its cleanup stops) first; start_agent also needs NATS_URL.
# shellcheck shell=bash

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready PORT PID [LOG]: until the agent on PORT answers /ready; the bench stops if it exits
# first or takes longer than 10 s.
wait_ready() {
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "$BENCH: an agent did not become ready (see ${3:-$LOG})" >&2
  exit 1
}

# start_agent [VAR=VALUE...]: bin/ebpf-agent with those extra variables, ready; sets AGENT_PID
# and AGENT_API (its base URL).
AGENT_PID=""
# shellcheck disable=SC2034 # AGENT_API is read by the callers
AGENT_API=""
start_agent() {
  local port
  port=$(free_port)
  # shellcheck disable=SC2034
  AGENT_API="http://127.0.0.1:$port"
  env NATS_URL="$NATS_URL" LISTEN_ADDR="127.0.0.1:$port" NODE_NAME=bench "$@" \
    bin/ebpf-agent >>"$LOG" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  wait_ready "$port" "$AGENT_PID"
}

stop_agent() {
  kill "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=""
}

# median / range: of the numbers on stdin (separated by blanks or lines); range as "lo–hi".
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s–%s", lo, hi}'; }
