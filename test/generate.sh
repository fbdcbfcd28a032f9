#!/usr/bin/env bash
# `make generate`: rebuilds generated code (BPF objects and bindings,
# protobuf stubs). Runs every test/generate.d/*.sh, which install their
# generators (clang, protoc) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test/generate.d
for f in test/generate.d/*.sh; do
  [ -e "$f" ] || continue
  echo "== generate: $f" >&2
  bash "$f"
done
