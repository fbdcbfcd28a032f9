#!/bin/sh
# gobuild.sh OUTDIR: the release build of both binaries, static (no cgo)
# and stamped with $VERSION, as the Dockerfiles run it (and the tests).
set -eu
out=${1:?usage: gobuild.sh OUTDIR}
version=${VERSION:-dev}
ldflags="-s -w -X github.com/fleetprof/fleetprof/internal/version.Version=$version"
export CGO_ENABLED=0
go build -trimpath -ldflags "$ldflags" -o "$out/fleetprof" ./fleet/cmd/fleetprof
go build -trimpath -ldflags "$ldflags" -o "$out/fleetprof-agent" ./agent/cmd/fleetprof-agent
