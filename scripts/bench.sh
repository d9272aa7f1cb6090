#!/usr/bin/env bash
# The benchmark suite (`make bench`; docs/performance.md): runs
# scripts/bench-agent.sh (in-kernel cost, overhead against bpftrace and
# libbpf-tools, agent pipeline), scripts/bench-aggregator.sh (transport,
# aggregator) and scripts/bench-dns.sh (the dns capture's cost per packet,
# throughput with and without it, against tcpdump), each of which writes
# build/bench/<name>.json and
# build/bench/<name>.md, and build/bench/bench_codec when it is built (the
# codec A/B); then assembles build/bench/results.json (the run: date, kernel,
# CPUs, commit, validity; one object per measurement) and results.md.
#
# A full run also writes the page: docs/bench/results.json is the results file
# of the run docs/performance.md shows, and scripts/bench-render.py renders its
# tables there between the bench markers. --quick (each benchmark once, tiny
# sizes) and --no-docs leave docs/ alone.
#
#   scripts/bench.sh [--quick] [--no-docs]
#
# Root is required (the agent part loads eBPF programs). The whole suite
# takes under 10 minutes on a 2-core machine; --quick about a minute.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK_ARG=""
DOCS=1
for arg in "$@"; do
  case "$arg" in
  --quick) QUICK_ARG=--quick DOCS=0 ;;
  --no-docs) DOCS=0 ;;
  *)
    echo "usage: scripts/bench.sh [--quick] [--no-docs]" >&2
    exit 2
    ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: must run as root: the agent benchmarks load eBPF programs and set" >&2
  echo "bench: kernel.bpf_stats_enabled (run make bench as root)" >&2
  exit 1
fi
for tool in jq curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not installed (make deps)" >&2; exit 1; }
done

# The machine's state every figure depends on, checked before any part runs.
# BPF run-time statistics add two clock reads to every program run: the parts
# turn them on only around their ns-per-run measurements, so they start off
# here (and go back to what they were at the end).
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -q -w kernel.bpf_stats_enabled=0
trap 'sysctl -q -w kernel.bpf_stats_enabled="$stats_before"' EXIT
# Programs on the hooks the loads go through, loaded before the run (an agent
# or a bpftrace left running): they would run in every loop, the ones without
# a tracer included, so the run is not valid.
BENCH=bench
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
foreign=$({
  bpftool prog show -j 2>/dev/null |
    jq -r '.[] | select(.type == "tracing" or .type == "raw_tracepoint" or .type == "tracepoint"
      or .type == "kprobe" or .type == "perf_event") | "\(.name // "?") (\(.type))"'
  root=$(cgroup2_root 2>/dev/null) &&
    bpftool cgroup show "$root" -j 2>/dev/null | jq -r '.[] | "\(.name // "?") (\(.attach_type) on the cgroup v2 root)"'
} | sort -u | paste -sd, - | sed 's/,/, /g')
[ -z "$foreign" ] || echo "bench: warning: eBPF programs already loaded: $foreign (the run will be marked invalid)" >&2

OUT=build/bench
mkdir -p "$OUT"
rm -f "$OUT/agent.json" "$OUT/agent.md" "$OUT/aggregator.json" "$OUT/aggregator.md" "$OUT/codec.json" \
  "$OUT/dns.json" "$OUT/dns.md"
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
sections=()
for part in agent aggregator dns; do
  script=scripts/bench-$part.sh
  if [ ! -x "$script" ]; then
    echo "bench: $script missing, skipped" >&2
    status=1
    continue
  fi
  echo "bench: running $script $QUICK_ARG"
  t0=$(date +%s)
  "$script" $QUICK_ARG
  rc=$?
  echo "bench: $script took $(($(date +%s) - t0)) s"
  # Each script writes its JSON last: without it the part failed.
  if [ -s "$OUT/$part.json" ] && jq -e . "$OUT/$part.json" >/dev/null 2>&1; then
    sections+=("$OUT/$part.json")
    [ $rc -eq 0 ] || echo "bench: warning: $script exited with $rc after writing its results" >&2
  else
    echo "bench: $script failed ($rc): no $OUT/$part.json" >&2
    status=1
  fi
done

# The codec A/B (tests/bench/bench_codec.c): its JSON lines become measurements
# codec.<case>[.<codec>].<field>, one per numeric field.
if [ -x "$OUT/bench_codec" ]; then
  echo "bench: running $OUT/bench_codec"
  if "$OUT/bench_codec" >"$OUT/codec.jsonl" 2>"$OUT/codec.log"; then
    jq -sc --arg cmd "build/bench/bench_codec" '
      {section: "codec", measurements: [.[] | select(type == "object" and .bench == "codec")
        | (["codec", .case, .codec] | map(select(. != null)) | join(".")) as $k
        | to_entries[] | select(.value | type == "number")
        | {id: "\($k).\(.key)", name: "\($k).\(.key)", value: .value,
           unit: ({events_per_s: "events/s", ns_per_event: "ns", speedup: "x"}[.key] // ""),
           command: $cmd, target: null, met: null, valid: true, invalid_reason: null}]}' \
      "$OUT/codec.jsonl" >"$OUT/codec.json"
    sections+=("$OUT/codec.json")
  else
    echo "bench: $OUT/bench_codec failed (see $OUT/codec.log)" >&2
    status=1
  fi
fi
elapsed=$(($(date +%s) - started))

# The commit measured: dirty when anything outside docs/ differs from it.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain -- . ':!docs' 2>/dev/null)" ] && commit+="-dirty"
run=$(jq -n --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg kernel "$(uname -r)" \
  --arg arch "$(uname -m)" --argjson cpus "$(nproc)" \
  --arg cpu "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  --argjson mem_kib "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" --arg commit "$commit" \
  --argjson quick "$([ -n "$QUICK_ARG" ] && echo true || echo false)" --argjson elapsed "$elapsed" \
  --arg load_before "$load_before" --arg load_after "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson stats_before "$stats_before" --arg foreign "$foreign" \
  --arg command "make bench${QUICK_ARG:+ BENCH_ARGS=$QUICK_ARG}" '
  {date: $date, kernel: $kernel, arch: $arch, cpus: $cpus, cpu_model: $cpu, mem_kib: $mem_kib,
   commit: $commit, quick: $quick, elapsed_seconds: $elapsed, command: $command,
   loadavg_before: $load_before, loadavg_after: $load_after,
   bpf_stats_enabled_before: $stats_before,
   preloaded_programs: ($foreign | if . == "" then [] else split(", ") end)}')

# One object per measurement, each with its section; the run is valid when
# every measurement is, and lists every reason one is not.
if [ ${#sections[@]} -gt 0 ]; then
  jq -s --argjson run "$run" '
    [.[] | .section as $s | .measurements[] | {section: $s} + .] as $ms
    | ([$ms[] | select(.valid == false) | .invalid_reason] | unique
       + if $run.preloaded_programs == [] then [] else
           ["eBPF programs were loaded before the run (every loop ran under them): "
            + ($run.preloaded_programs | join(", "))] end) as $why
    | {run: ($run + {valid: ($why == []), invalid_reasons: $why}),
       sections: [.[] | .section], measurements: $ms}' \
    "${sections[@]}" >"$OUT/results.json"
else
  jq -n --argjson run "$run" '{run: ($run + {valid: false, invalid_reasons: ["no benchmark wrote results"]}),
    sections: [], measurements: []}' >"$OUT/results.json"
fi

{
  echo "# Benchmark results"
  echo
  jq -r '.run | "\(.date), \(.cpus) CPUs (\(.cpu_model)), kernel \(.kernel), commit \(.commit)\(if .quick then ", --quick (tiny sizes: figures are not meaningful)" else "" end); suite took \(.elapsed_seconds) s. Run: \(if .valid then "valid" else "INVALID: " + (.invalid_reasons | join("; ")) end)."' "$OUT/results.json"
  echo
  for part in agent aggregator dns; do
    [ -s "$OUT/$part.md" ] && cat "$OUT/$part.md" && echo
  done
  met=$(jq '[.measurements[] | select(.met == true)] | length' "$OUT/results.json")
  missed=$(jq '[.measurements[] | select(.met == false)] | length' "$OUT/results.json")
  echo "Targets: $met met, $missed missed."
} >"$OUT/results.md"

cat "$OUT/results.md"
echo
echo "bench: wrote $OUT/results.md and $OUT/results.json in ${elapsed} s"

if [ $DOCS = 1 ] && [ $status = 0 ]; then
  mkdir -p docs/bench
  cp "$OUT/results.json" docs/bench/results.json
  scripts/bench-render.py docs/bench/results.json docs/performance.md || status=1
  echo "bench: wrote docs/bench/results.json and the tables of docs/performance.md"
fi
exit $status
