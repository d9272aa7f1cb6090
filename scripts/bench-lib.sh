# Sourced by the scripts/bench-*.sh: the helpers they share.
# The caller sets BENCH (its name, for messages), LOG and the PIDS array
# (what its cleanup stops) first; start_agent also needs NATS_URL.
# shellcheck shell=bash

# cgroup2_root: prints where the cgroup v2 hierarchy is mounted (hybrid hosts mount it at
# /sys/fs/cgroup/unified). Fails, saying so, without one.
cgroup2_root() {
  local root
  for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [ "$(stat -fc %T "$root" 2>/dev/null)" = cgroup2fs ]; then
      echo "$root"
      return
    fi
  done
  echo "$BENCH: no cgroup v2 hierarchy" >&2
  return 1
}

# make_cgroup NAME: makes the cgroup v2 group NAME (for a bench's load) and prints its path.
make_cgroup() {
  local root
  root=$(cgroup2_root) || return 1
  mkdir "$root/$1" && echo "$root/$1"
}

# hold_hooks WHAT READY CMD...: runs CMD, which attaches empty programs, writes their ids to
# READY and holds them, as HOOKS_PID until stop_hooks. Fails, saying so (WHAT: where), when
# they are not attached within 5 s.
hold_hooks() {
  local what=$1 ready=$2
  shift 2
  rm -f "$ready"
  "$@" 2>>"$LOG" &
  HOOKS_PID=$!
  PIDS+=("$HOOKS_PID")
  for _ in $(seq 100); do
    [ -e "$ready" ] && return
    sleep 0.05
  done
  echo "$BENCH: could not attach the empty programs $what (see $LOG)" >&2
  return 1
}

# start_hooks CGROUP READY [--stats]: empty cgroup_skb programs on CGROUP's two hooks
# (scripts/bench-hooks.py).
start_hooks() { hold_hooks "to $1" "$2" python3 scripts/bench-hooks.py "$@"; }

stop_hooks() {
  stop_pids TERM "$HOOKS_PID"
  HOOKS_PID=""
}

# in_cgroup CGROUP CMD...: runs CMD inside CGROUP.
in_cgroup() { sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready PORT PID [LOG]: until the agent on PORT answers /ready; the bench stops if it exits
# first or takes longer than 10 s.
wait_ready() {
  for _ in $(seq 200); do
    curl -sf -m 2 "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "$BENCH: an agent did not become ready (see ${3:-$LOG})" >&2
  exit 1
}

# start_listener URL: a subscriber to every agent's subject on the NATS server at URL that
# counts and discards (build/bench/bench_sub --discard), as an aggregator would listen: an agent
# holds the batches no one subscribes to (README, "no aggregator listening"), which is not how
# it runs. Waits until it is subscribed (10 s at most); sets LISTENER_PID.
LISTENER_PID=""
start_listener() {
  local ready pid
  ready=$(mktemp -u "${TMPDIR:-/tmp}/bench-listener.XXXXXX")
  for _ in $(seq 100); do
    rm -f "$ready"
    build/bench/bench_sub "$1" 'ebpf.events.>' --ready "$ready" --discard >/dev/null 2>>"$LOG" &
    pid=$!
    for _ in $(seq 40); do
      [ -e "$ready" ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if [ -e "$ready" ]; then
      rm -f "$ready"
      PIDS+=("$pid")
      LISTENER_PID=$pid
      return 0
    fi
    wait "$pid" 2>/dev/null # not up yet: the server may still be starting
    sleep 0.1
  done
  echo "$BENCH: no listener on $1 (see $LOG)" >&2
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
  stop_pids TERM "$AGENT_PID"
  AGENT_PID=""
}

# stop_pids SIGNAL PID...: sends each the signal and waits for them, at most 10 s; what still
# runs then is killed (and said in $LOG). A bounded stop: a process started in the background of
# a script ignores SIGINT until it installs its own handler, so a tool told to stop too early
# (or one that hangs on the way out) would otherwise keep the bench waiting for ever. Only this
# shell's own children are signalled: a PID that exited long ago may name another process now.
stop_pids() {
  local sig=$1 p ours=() alive
  shift
  for p in "$@"; do running_child "$p" && ours+=("$p"); done
  [ ${#ours[@]} -gt 0 ] || return 0
  for p in "${ours[@]}"; do kill "-$sig" "$p" 2>/dev/null || true; done
  for _ in $(seq 200); do
    alive=""
    for p in "${ours[@]}"; do running_child "$p" && alive+=" $p"; done
    [ -z "$alive" ] && break
    sleep 0.05
  done
  for p in $alive; do
    echo "$BENCH: pid $p ($(cat "/proc/$p/comm" 2>/dev/null)) did not stop on SIG$sig in 10 s: killed" |
      tee -a "${LOG:-/dev/null}" >&2
    kill -KILL "$p" 2>/dev/null || true
  done
  for p in "${ours[@]}"; do wait "$p" 2>/dev/null || true; done
  return 0
}

# running_child PID: true when PID is a child of this shell that has not exited.
running_child() {
  local state ppid
  [ -n "$1" ] && [ -r "/proc/$1/status" ] || return 1
  read -r state ppid < <(awk '/^State:/ {s = $2} /^PPid:/ {p = $2} END {print s, p}' "/proc/$1/status" 2>/dev/null)
  [ "$ppid" = "$BASHPID" ] && [ "$state" != Z ]
}

# median / range: of the numbers on stdin (separated by blanks or lines); range as "lo–hi".
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s–%s", lo, hi}'; }
