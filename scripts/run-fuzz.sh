#!/usr/bin/env bash
# Runs each libFuzzer target given for SECONDS on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<target>/), so the repository's corpus only
# changes when asked: FUZZ_MERGE=1 merges the new interesting inputs back
# (libFuzzer -merge=1). Any finding (crash, sanitizer report, leak, timeout,
# out-of-memory) fails the run; the input is kept as
# build-fuzz/artifacts/<target>-crash-<sha1> to replay with
# `build-fuzz/<target> <file>`.
#
# FUZZ_RUNS=N stops each target after N inputs instead (SECONDS still caps
# it). FUZZ_REPORT=1 writes a table of the run (inputs, time, findings per
# target) into docs/performance.md between its fuzz markers.
#
# usage: scripts/run-fuzz.sh SECONDS build-fuzz/fuzz_x...
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: run-fuzz.sh SECONDS TARGET...}
shift
artifacts=build-fuzz/artifacts
mkdir -p "$artifacts"

# As for the sanitized test suites (scripts/run-tests.sh): stop at the first
# report. libFuzzer looks for leaks itself after each input (-detect_leaks).
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

scratch=$(mktemp -d /tmp/ebpf-monitor-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

failed=()
report=()
for bin in "$@"; do
  name=$(basename "$bin")
  seeds=tests/fuzz/corpus/$name
  corpus=$scratch/$name
  mkdir -p "$corpus"
  [ -d "$seeds" ] && cp -r "$seeds/." "$corpus/"
  opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/$name-")
  [ -f "tests/fuzz/$name.dict" ] && opts+=(-dict="tests/fuzz/$name.dict")
  [ -n "${FUZZ_RUNS:-}" ] && opts+=(-runs="$FUZZ_RUNS")
  nseeds=$(find "$corpus" -type f | wc -l)
  echo "=== $name (${secs}s${FUZZ_RUNS:+ or $FUZZ_RUNS inputs}, $nseeds seed inputs)"
  start=$(date +%s)
  if "$bin" "${opts[@]}" "$corpus" >"$scratch/$name.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$name.log")
    took=$(($(date +%s) - start))
    report+=("| \`$name\` | $nseeds | ${runs:-?} | $took | $(find "$corpus" -type f | wc -l) | none |")
    echo "=== $name: ok (${runs:-?} runs, corpus $(find "$corpus" -type f | wc -l) inputs)"
    if [ "${FUZZ_MERGE:-}" = 1 ]; then
      mkdir -p "$seeds"
      "$bin" -merge=1 "$seeds" "$corpus" >>"$scratch/$name.log" 2>&1 &&
        echo "=== $name: merged into $seeds ($(find "$seeds" -type f | wc -l) inputs)"
    fi
  else
    # The report: from the sanitizer's or libFuzzer's first line to the artifact.
    sed -n '/^==[0-9]*==\|runtime error\|^ERROR: libFuzzer\|^INFO: Running with\|^SUMMARY/,$p' \
      "$scratch/$name.log" | grep -v '^#[0-9]' | head -80
    echo "=== $name: FAILED (input saved in $artifacts/$name-*)"
    report+=("| \`$name\` | $nseeds | — | — | — | **finding**, see $artifacts |")
    failed+=("$name")
  fi
done

# The table in docs/performance.md, between the markers, from this run only.
if [ "${FUZZ_REPORT:-}" = 1 ]; then
  doc=docs/performance.md
  table=$scratch/fuzz-table.md
  {
    echo "<!-- fuzz:begin (written by make fuzz FUZZ_REPORT=1; do not edit) -->"
    echo "$(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r), clang $(clang --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1);"
    echo "\`make fuzz FUZZ_SECONDS=$secs${FUZZ_RUNS:+ FUZZ_RUNS=$FUZZ_RUNS} FUZZ_REPORT=1\`, each target with ASan and UBSan."
    echo
    echo "| target | seed inputs | inputs run | seconds | corpus after | findings |"
    echo "|---|---:|---:|---:|---:|---|"
    printf '%s\n' "${report[@]}"
    echo "<!-- fuzz:end -->"
  } >"$table"
  awk -v table="$table" '
    /<!-- fuzz:begin/ { while ((getline line < table) > 0) print line; skip = 1; next }
    /<!-- fuzz:end -->/ { skip = 0; next }
    !skip { print }' "$doc" >"$scratch/doc.md" && cp "$scratch/doc.md" "$doc"
  echo "fuzz: wrote the figures into $doc"
fi

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED fuzz targets: ${failed[*]}"
  exit 1
fi
echo "all $# fuzz targets ran ${secs}s without findings"
