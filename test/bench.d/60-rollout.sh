#!/usr/bin/env bash
# Config rollout at scale: `config apply` → all APPLIED for 1,000 simulated
# agents (real agent/control clients in one process), and the push →
# applied latency percentiles of one agent.
set -euo pipefail
cd "${FLEETPROF_ROOT:-.}"
go run ./test/load/rollout -fleet-bin dist/fleetprof -agents "${ROLLOUT_AGENTS:-1000}" -samples "${ROLLOUT_SAMPLES:-50}" 2>/dev/null
