#!/usr/bin/env bash
# The benchmark suite (`make bench`; docs/performance.md): runs
# scripts/bench-agent.sh (in-kernel cost, agent pipeline) and
# scripts/bench-aggregator.sh (transport, aggregator), each of which writes
# build/bench/<name>.json and build/bench/<name>.md, then assembles
# build/bench/results.md and build/bench/results.json and prints the table.
#
#   scripts/bench.sh [--quick]     --quick: each benchmark once, tiny sizes
#
# Root is required (the agent part loads eBPF programs). The whole suite
# takes under 15 minutes on a 2-core machine; --quick about a minute.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK_ARG=""
case "${1:-}" in
--quick) QUICK_ARG=--quick ;;
"") ;;
*)
  echo "usage: scripts/bench.sh [--quick]" >&2
  exit 2
  ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: must run as root: the agent benchmarks load eBPF programs and set" >&2
  echo "bench: kernel.bpf_stats_enabled (run make bench as root)" >&2
  exit 1
fi
for tool in jq curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not installed (make deps)" >&2; exit 1; }
done

OUT=build/bench
mkdir -p "$OUT"
rm -f "$OUT/agent.json" "$OUT/agent.md" "$OUT/aggregator.json" "$OUT/aggregator.md"
started=$(date +%s)
status=0
sections=()
for part in agent aggregator; do
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
elapsed=$(($(date +%s) - started))

machine=$(jq -n --arg kernel "$(uname -r)" --arg arch "$(uname -m)" --argjson cpus "$(nproc)" \
  --arg cpu "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  --argjson mem_kib "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
  '{kernel: $kernel, arch: $arch, cpus: $cpus, cpu_model: $cpu, mem_kib: $mem_kib}')

if [ ${#sections[@]} -gt 0 ]; then
  jq -s --argjson machine "$machine" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --argjson quick "$([ -n "$QUICK_ARG" ] && echo true || echo false)" \
    --argjson elapsed "$elapsed" '
    {generated_at: $date, quick: $quick, elapsed_seconds: $elapsed, machine: $machine,
     sections: [.[] | {section, measurements}],
     measurements: [.[] | .section as $s | .measurements[] | {section: $s} + .]}' \
    "${sections[@]}" >"$OUT/results.json"
else
  jq -n '{measurements: []}' >"$OUT/results.json"
fi

{
  echo "# Benchmark results"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)$([ -n "$QUICK_ARG" ] && echo ", --quick (tiny sizes: figures are not meaningful)"); suite took ${elapsed} s."
  echo
  for part in agent aggregator; do
    [ -s "$OUT/$part.md" ] && cat "$OUT/$part.md" && echo
  done
  met=$(jq '[.measurements[] | select(.met == true)] | length' "$OUT/results.json")
  missed=$(jq '[.measurements[] | select(.met == false)] | length' "$OUT/results.json")
  echo "Targets: $met met, $missed missed."
} >"$OUT/results.md"

cat "$OUT/results.md"
echo
echo "bench: wrote $OUT/results.md and $OUT/results.json in ${elapsed} s"
exit $status
