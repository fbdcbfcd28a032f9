#!/usr/bin/env bash
# Sampler data-plane benchmark: the agent's own CPU, in-kernel cost per
# sample, RSS and start-up, at 19 Hz and 99 Hz, on 20 busy processes plus
# ~10 execs/s of churn. Prints one markdown section to stdout.
# FLEETPROF_BENCH_SAMPLER_DURATION sets the run length per rate (default 60s).
set -euo pipefail
cd "$(dirname "$0")/../.."
dur="${FLEETPROF_BENCH_SAMPLER_DURATION:-60s}"
bin="${FLEETPROF_BIN:-$PWD/test/.bin}"
mkdir -p "$bin"
work="$(mktemp -d)"
pids=()
old_stats="$(sysctl -n kernel.bpf_stats_enabled)"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats" || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$bin/bench-sampler" ./test/bench/sampler
gcc -O1 -fno-omit-frame-pointer -o "$bin/cpuwork" test/workload/cpu.c
sysctl -qw kernel.bpf_stats_enabled=1
idle_startup="$("$bin/bench-sampler" -startup)"

for _ in $(seq 20); do
  "$bin/cpuwork" cpu 3600 &
  pids+=($!)
done
( while :; do /bin/true; /bin/sleep 0.2; done ) &
pids+=($!)
sleep 2

for hz in 19 99; do
  echo "bench sampler: ${hz} Hz for ${dur}" >&2
  "$bin/bench-sampler" -hz "$hz" -duration "$dur" > "$work/$hz.json"
done
"$bin/bench-sampler" -report "$idle_startup" "$work/19.json" "$work/99.json"
