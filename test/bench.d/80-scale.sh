#!/usr/bin/env bash
# One fleet replica at scale: agents held, RSS/heap per agent at steady
# state, idle CPU, config to all with APPLIED stored, reconnect storm after
# SIGKILL — against the bare opamp-go reference. The default size
# fits a few minutes; SCALE_AGENTS=19000 runs the full size (~19,990 is the
# most one replica can hold under the 20,000 file cap). Each server takes
# SCALE_STORMS storms (default 3), and the table shows the median one.
set -euo pipefail
cd "${FLEETPROF_ROOT:-.}"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/scale" ./test/load/scale
"$bin/scale" -fleet-bin dist/fleetprof -agents "${SCALE_AGENTS:-2000}" -idle "${SCALE_IDLE:-60s}" -per-worker "${SCALE_PER_WORKER:-5000}" -storms "${SCALE_STORMS:-3}"
