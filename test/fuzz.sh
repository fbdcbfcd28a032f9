#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time ($1, default 10s)
# on top of its committed corpus in testdata/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-10s}"
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
  dir=$(dirname "$f")
  for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$f" | awk '{print $2}'); do
    echo "== fuzz $dir $fn ($t)"
    go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$t" "./$dir"
  done
done
