#!/usr/bin/env bash
# `make run`: a local NATS server on 127.0.0.1:4222 (RUN_NATS_PORT moves it; none when NATS_URL is set),
# the agent on :8080 and the aggregator on :8081, in the foreground.
# Ctrl-C stops all three. AGENT_LISTEN_ADDR / AGGREGATOR_LISTEN_ADDR move the
# HTTP APIs; every other setting comes from the environment as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "make run: the agent loads eBPF programs and needs root (run it as root, e.g. with sudo)" >&2
  exit 1
fi

agent_addr="${AGENT_LISTEN_ADDR:-:8080}"
agg_addr="${AGGREGATOR_LISTEN_ADDR:-:8081}"
agent_port="${agent_addr##*:}"
agg_port="${agg_addr##*:}"

# Where a listen address is reached from this machine: its own host (an IPv6 one in
# brackets, a host the listener alone binds), or loopback for every address (:PORT).
reach() {
  local host="${1%:*}"
  case "$host" in
    '' | 0.0.0.0) host=127.0.0.1 ;;
    '[::]') host='[::1]' ;;
  esac
  echo "$host:${1##*:}"
}
agent_at=$(reach "$agent_addr")
agg_at=$(reach "$agg_addr")
# As the commands printed below name them: localhost for every address.
agent_url="$agent_at" agg_url="$agg_at"
case "${agent_addr%:*}" in '' | 0.0.0.0 | '[::]') agent_url="localhost:$agent_port" ;; esac
case "${agg_addr%:*}" in '' | 0.0.0.0 | '[::]') agg_url="localhost:$agg_port" ;; esac

pids=()     # agent and aggregator
nats_pid=""
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping"
  # One after the other: the agent flushes its last batch on the way out, which the
  # aggregator (still subscribed) takes; NATS goes last.
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$nats_pid" ]; then
    kill -TERM "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
  fi
}
trap cleanup INT TERM EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

not_started() {
  echo "run: agent or aggregator did not start; see the messages above" >&2
  exit 1
}

wait_http() { # url, seconds; fails at once when the agent or the aggregator has exited
  for _ in $(seq $(($2 * 10))); do
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || return 1
    done
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}

nats_port="${RUN_NATS_PORT:-4222}"
case "$nats_port" in
  '' | *[!0-9]* | 0*) echo "run: invalid RUN_NATS_PORT=\"$nats_port\": must be a port 1-65535" >&2; exit 2 ;;
esac
if [ "$nats_port" -gt 65535 ]; then
  echo "run: invalid RUN_NATS_PORT=\"$nats_port\": must be a port 1-65535" >&2
  exit 2
fi
if [ -z "${NATS_URL:-}" ]; then
  if port_open "$nats_port"; then
    echo "run: something already listens on 127.0.0.1:$nats_port; stop it, set RUN_NATS_PORT to another port, or set NATS_URL to use it" >&2
    exit 1
  fi
  echo "run: nats-server on 127.0.0.1:$nats_port"
  # Its own session, so Ctrl-C reaches it only through cleanup, after the agent.
  setsid nats-server -a 127.0.0.1 -p "$nats_port" &
  nats_pid=$!
  export NATS_URL="nats://127.0.0.1:$nats_port"
  for _ in $(seq 100); do port_open "$nats_port" && break; sleep 0.1; done
else
  echo "run: using NATS at $NATS_URL"
fi

# Their own sessions too: Ctrl-C reaches them only through cleanup, in order.
echo "run: agent on $agent_addr"
setsid bin/ebpf-agent --listen-addr "$agent_addr" &
pids+=($!)
echo "run: aggregator on $agg_addr"
setsid bin/ebpf-aggregator --listen-addr "$agg_addr" &
pids+=($!)

if [ -n "$nats_pid" ]; then
  stops="Ctrl-C stops nats-server, the agent and the aggregator."
else
  stops="Ctrl-C stops the agent and the aggregator; the NATS server at $NATS_URL keeps running."
fi
# Up (/health), then ready: the aggregator's /ready wants NATS, which a NATS_URL of the
# user's may not be yet; both keep trying it meanwhile.
if wait_http "http://$agent_at/ready" 30 && wait_http "http://$agg_at/health" 30; then
  if ! wait_http "http://$agg_at/ready" "$([ -n "$nats_pid" ] && echo 30 || echo 5)"; then
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || not_started
    done
    echo "run: NATS at $NATS_URL is not reachable yet; the agent keeps its batches and both keep trying (curl -s $agg_url/api/stats | jq .bus)"
  fi
  cat <<MSG

run: ready. Try, in another terminal:
  curl -s '$agent_url/api/events?type=connection&limit=5'          # this node (agent)
  curl -s '$agg_url/api/events?type=exec,exit&limit=5'            # the whole cluster (aggregator)
  curl -s $agg_url/api/nodes
  curl -s $agg_url/api/stats
  curl -N '$agg_url/api/events/stream?type=exec'                  # live, Server-Sent Events
  bin/ebpf-aggregator tail --nats $NATS_URL --type connection             # live from the bus
${API_TOKEN:+(API_TOKEN is set: add -H "Authorization: Bearer \$API_TOKEN" to the /api requests)
}$stops

MSG
else
  not_started
fi

# Stop everything as soon as any of them exits.
wait -n "${pids[@]}" ${nats_pid:+"$nats_pid"} 2>/dev/null || true
