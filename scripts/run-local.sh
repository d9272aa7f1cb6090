#!/usr/bin/env bash
# `make run`: a local NATS server (unless NATS_URL is set) and the agent on
# :8080, in the foreground. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "make run: the agent loads eBPF programs and needs root: sudo make run" >&2
  exit 1
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

if [ -z "${NATS_URL:-}" ]; then
  echo "run: nats-server on 127.0.0.1:4222"
  nats-server -a 127.0.0.1 -p 4222 &
  pids+=($!)
  export NATS_URL=nats://127.0.0.1:4222
fi

echo "run: agent on ${AGENT_LISTEN_ADDR:-:8080}"
LISTEN_ADDR="${AGENT_LISTEN_ADDR:-:8080}" bin/ebpf-agent &
pids+=($!)


echo "run: try  curl -s 'localhost:8080/api/events?type=connection&limit=5'"
wait -n "${pids[@]}"
