#!/usr/bin/env bash
# Runs every Criterion test binary given on the command line and prints one
# summary. End-to-end suites (test_e2e_*) and agent suites (test_agent_*) share
# BPF attach points and ports, so they run with one worker.
set -uo pipefail

failed=()
for t in "$@"; do
  name=$(basename "$t")
  jobs=2
  case "$name" in test_e2e_*|test_agent_*|test_aggregator_*) jobs=1 ;; esac
  echo "=== $name"
  start=$(date +%s)
  if "$t" --jobs "$jobs" --short-filename; then
    echo "=== $name: ok ($(( $(date +%s) - start ))s)"
  else
    echo "=== $name: FAILED ($(( $(date +%s) - start ))s)"
    failed+=("$name")
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all ${#} test suites passed"
