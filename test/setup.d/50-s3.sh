#!/usr/bin/env bash
# Builds versitygw (the Versity S3 Gateway, Apache-2.0: a real S3 server
# with a POSIX backend), pinned below, into $FLEETPROF_BIN for the tests of
# the S3 profile-blob backend (test/s3). About 1.5 minutes the first time;
# skipped when the binary there is already that version.
set -euo pipefail
version=v1.8.0
root="${FLEETPROF_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
bin="${FLEETPROF_BIN:-$root/test/.bin}"
mkdir -p "$bin"
if [[ -x "$bin/versitygw" ]] && go version -m "$bin/versitygw" 2>/dev/null | grep -q "mod[[:space:]]*github.com/versity/versitygw[[:space:]]*$version[[:space:]]"; then
  exit 0
fi
echo "building versitygw $version into $bin (a minute or two)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Outside our module: its own dependency graph, resolved from the proxy.
(cd "$tmp" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath "github.com/versity/versitygw/cmd/versitygw@$version")
mv "$tmp/versitygw" "$bin/versitygw"
