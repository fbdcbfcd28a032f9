#!/usr/bin/env bash
# `make bench`: runs every test/bench.d/*.sh in name order. Each script
# prints one markdown section (method, figures, ratio against a baseline
# measured in the same run) to stdout; this script writes BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLEETPROF_ROOT="$PWD" FLEETPROF_BIN="$PWD/test/.bin"
out=BENCHMARKS.md.tmp
{
  echo "# fleetprof benchmarks"
  echo
  echo "Written by \`make bench\` on $(date -u +%Y-%m-%dT%H:%MZ). Every figure below was measured in"
  echo "that one run, on this machine:"
  echo
  echo "* CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') × $(nproc)"
  echo "* memory: $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r); $(go version | cut -d' ' -f3)"
  echo
  for f in test/bench.d/*.sh; do
    echo "== bench: $f" >&2
    bash "$f"
    echo
  done
} > "$out"
mv "$out" BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
