#!/usr/bin/env bash
# Regenerates the protobuf and connect stubs in internal/pb from proto/.
# protoc comes from Debian (protobuf-compiler); the two plugins are pinned
# as tools in go.mod and built here.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v protoc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-connect-go" connectrpc.com/connect/cmd/protoc-gen-connect-go
rm -rf internal/pb/parca internal/pb/push internal/pb/types
mkdir -p internal/pb
protoc -I proto \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-connect-go="$bin/protoc-gen-connect-go" \
  --go_out=internal/pb --go_opt=module=github.com/fleetprof/fleetprof/internal/pb \
  --connect-go_out=internal/pb --connect-go_opt=module=github.com/fleetprof/fleetprof/internal/pb \
  $(cd proto && find . -name "*.proto" | sed "s|^\./||" | sort)
