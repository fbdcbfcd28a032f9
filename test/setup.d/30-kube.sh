#!/usr/bin/env bash
# Builds the real kube-apiserver (k8s.io/kubernetes v1.34.2, from the Go
# module proxy) into $FLEETPROF_BIN for the discovery tests and the
# end-to-end harness. About four minutes the first time; skipped when the
# binary is there and newer than the tools module.
set -euo pipefail
root="${FLEETPROF_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
bin="${FLEETPROF_BIN:-$root/test/.bin}"
src="$root/test/tools/kube-apiserver"
mkdir -p "$bin"
if [[ -x "$bin/kube-apiserver" && "$bin/kube-apiserver" -nt "$src/go.mod" && "$bin/kube-apiserver" -nt "$src/main.go" ]]; then
  exit 0
fi
echo "building kube-apiserver into $bin (a few minutes)"
cd "$src"
GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$bin/kube-apiserver.tmp" .
mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
