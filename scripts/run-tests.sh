#!/usr/bin/env bash
# Runs every Criterion test binary given on the command line and prints one
# summary. End-to-end suites (test_e2e_*) and agent suites (test_agent_*) share
# BPF attach points and ports, so they run with one worker.
#
# Skipped tests are never silent: each suite's skipped tests are listed with
# its counts (from Criterion's JSON report), and the summary gives the total.
# With CI=true in the environment any skipped test fails the run: on CI a
# skip means a missing dependency or privilege, i.e. a test that did not run.
#
# Sanitized builds (make SANITIZE=...) run with the options below unless the
# environment already sets them; see CONTRIBUTING.md.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# halt_on_error: the first report ends the process, so a finding is a failed
# test and not a line lost in a log. detect_leaks=0: LeakSanitizer works here
# but (1) libh2o-evloop keeps per-context allocations that every process with
# an HTTP server reports (tests/lsan.supp names them) and (2) a failed
# cr_assert() leaves its test mid-way, so one failure becomes megabytes of
# leak reports of the test's own JSON and runs several times slower. The fuzz
# targets do check for leaks. To look by hand:
# ASAN_OPTIONS=detect_leaks=1 scripts/run-tests.sh build-asan/tests/test_x
# log_path: ASan and TSan reports go to files, one per process, so a finding
# in a binary a test started (the agent, aggregator replicas) fails the suite
# even when the test only looks at that process's HTTP answers. gcc's UBSan
# ignores log_path: its reports stay on the process's stderr (the test's
# output, or the log of the process it started, which the e2e suites print
# when they fail), and -fno-sanitize-recover makes the process exit.
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
san=$reports/sanitizer
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$san}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:log_path=$san}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp:log_path=$san}

failed=()
why=() # "suite::test: message" of each failed test, repeated in the summary
skipped_total=0
tested_total=0
# The failed tests of one suite with their first message, one line each (a log's
# tail, all a CI page may show, then still says why): from the JSON report, or
# when it is missing or unparsable, that the suite itself failed.
failed_tests() {
  local name=$1 report=$2 lines=
  if [ -s "$report" ] && jq -e . "$report" >/dev/null 2>&1; then
    lines=$(jq -r '.test_suites[] | .name as $s | .tests[]
                   | select(.status == "FAILED" or .status == "ERRORED")
                   | "\($s)::\(.name): \(.status) \((.messages // []) | map(.[0:300]) | join("; "))"' \
              "$report")
  elif [ -s "$report" ]; then
    # Line by line: Criterion writes one key per line at fixed indents.
    lines=$(awk '
      function val(l) { sub(/^[^:]*: "/, "", l); sub(/",?$/, "", l); return l }
      /^      "name": / { suite = val($0) }
      /^          "name": / { test = val($0); bad = 0 }
      /^          "status": "(FAILED|ERRORED)"/ { bad = 1; status = val($0); msg = "" }
      /^            "/ && bad { m = $0; sub(/^ *"/, "", m); sub(/",?$/, "", m); msg = msg (msg ? "; " : "") m }
      /^          [\]}]/ && bad { print suite "::" test ": " status " " substr(msg, 1, 300); bad = 0 }
    ' "$report")
  fi
  [ -n "$lines" ] || lines="(no failed test in its report: a crash, a timeout or a sanitizer report; see its output above)"
  while IFS= read -r l; do why+=("$name: $l"); done <<<"$lines"
}

for t in "$@"; do
  name=$(basename "$t")
  jobs=2
  case "$name" in test_e2e_*|test_agent_*|test_aggregator_*) jobs=1 ;; esac
  echo "=== $name"
  start=$(date +%s)
  report=$reports/$name.json
  rm -f "$report"
  "$t" --jobs "$jobs" --short-filename --json="$report"
  rc=$?
  secs=$(( $(date +%s) - start ))

  counts="no report"
  skipped=0
  if [ -s "$report" ] && jq -e . "$report" >/dev/null 2>&1; then
    read -r passed failing errored skipped < <(jq -r '"\(.passed) \(.failed) \(.errored) \(.skipped)"' "$report")
    counts="passed $passed, failed $failing, crashed $errored, skipped $skipped"
    tested_total=$(( tested_total + passed + failing + errored + skipped ))
    skipped_total=$(( skipped_total + skipped ))
    jq -r '.test_suites[] | .name as $s | .tests[] | select(.status == "SKIPPED")
           | "    skipped: \($s)::\(.name)\(if (.messages // []) | length > 0 then ": " + (.messages | join("; ")) else "" end)"' "$report"
  elif [ -s "$report" ]; then
    # Criterion writes assertion messages into the JSON unescaped, which can
    # leave it unparsable; the status fields are still one per test.
    st() { grep -c "\"status\": \"$1\"" "$report"; }
    passed=$(st PASSED) failing=$(st FAILED) errored=$(st ERRORED) skipped=$(st SKIPPED)
    counts="passed $passed, failed $failing, crashed $errored, skipped $skipped"
    tested_total=$(( tested_total + passed + failing + errored + skipped ))
    skipped_total=$(( skipped_total + skipped ))
    [ "$skipped" -eq 0 ] || echo "    skipped: $skipped tests (see $name --verbose)"
  elif [ $rc -eq 0 ]; then
    rc=1 # a suite that passes must leave its report
  fi

  if compgen -G "$san.*" >/dev/null; then
    for f in "$san".*; do
      echo "--- sanitizer report from pid ${f##*.}:"
      cat "$f"
    done
    rm -f "$san".*
    counts="$counts; sanitizer reports above"
    rc=1
  fi

  if [ $rc -ne 0 ]; then
    echo "=== $name: FAILED (${secs}s; $counts)"
    failed+=("$name")
    failed_tests "$t" "$report"
  elif [ "$skipped" -ne 0 ] && [ "${CI:-}" = true ]; then
    echo "=== $name: FAILED (${secs}s; $counts; CI=true: skipped tests fail the run)"
    failed+=("$name")
  else
    echo "=== $name: ok (${secs}s; $counts)"
  fi
done

echo "$# suites, $tested_total tests, $skipped_total skipped"
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED: ${failed[*]}"
  printf '  %s\n' "${why[@]}"
  # make test repeats these lines at its end, after the other steps' output.
  if [ -n "${TEST_FAILURES_FILE:-}" ]; then printf '%s\n' "${why[@]}" >>"$TEST_FAILURES_FILE"; fi
  exit 1
fi
echo "all $# test suites passed"
