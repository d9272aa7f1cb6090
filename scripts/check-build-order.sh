#!/usr/bin/env bash
# Builds the way CONTRIBUTING.md tells contributors to, from an empty build
# directory, in the order that used to break: one test suite first
# (make build/tests/test_config), then `make`, then an agent test suite.
# Runs in a scratch BUILD/BIN so the tree's own build/ is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=$(mktemp -d /tmp/ebpf-monitor-build-order.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
b=$scratch/build
m=(make --no-print-directory -j"${JOBS:-2}" BUILD="$b" BIN="$scratch/bin")

step() {
  if ! "$@" >"$scratch/log" 2>&1; then
    tail -30 "$scratch/log" >&2
    echo "build-order: FAILED: make ${*: -1}" >&2
    exit 1
  fi
}

step "${m[@]}" "$b/tests/test_config"
step "${m[@]}"
step "${m[@]}" "$b/tests/test_agent_capture"
for f in "$scratch/bin/ebpf-agent" "$scratch/bin/ebpf-aggregator" "$b/tests/test_agent_capture"; do
  [ -x "$f" ] || { echo "build-order: FAILED: $f was not built" >&2; exit 1; }
done
echo "build-order: ok (test suite, then make, then an agent suite, from a clean build dir)"
