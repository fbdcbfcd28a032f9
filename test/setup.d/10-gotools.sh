#!/usr/bin/env bash
# Go tools are pinned in go.mod's tool block and run with `go tool`;
# building them here keeps their compile time out of the test timings.
set -euo pipefail
go build -o /dev/null honnef.co/go/tools/cmd/staticcheck
