#!/usr/bin/env bash
# Enrollment rate and memory per idle agent, 1,000 real control clients.
set -euo pipefail
cd "${FLEETPROF_ROOT:-.}"
go run ./test/load -fleet-bin dist/fleetprof -agents "${LOAD_AGENTS:-1000}" -idle "${LOAD_IDLE:-20s}"
