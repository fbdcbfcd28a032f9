#!/usr/bin/env bash
# Ingest throughput (Parca WriteRaw over loopback gRPC into the embedded
# store) against raw disk writes of the same bytes, and merge latency over
# an hour and a day of one series. Prints one markdown section.
set -euo pipefail
cd "$(dirname "$0")/../.."
go run ./fleet/ingest/internal/ingestbench -clients 32 -profiles 4000
