#!/usr/bin/env bash
# Installs what the test suite needs (apt packages, Go tools, built test
# binaries such as kube-apiserver). Idempotent: each step checks first.
# Every file in test/setup.d/ runs in name order.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLEETPROF_ROOT="$PWD"
export FLEETPROF_BIN="$PWD/test/.bin"
mkdir -p "$FLEETPROF_BIN"
for f in test/setup.d/*.sh; do
  echo "== setup: $f"
  bash "$f"
done
