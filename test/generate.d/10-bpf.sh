#!/usr/bin/env bash
# Rebuilds bpf/profile_*_bpfel.{go,o} from bpf/profile.c with bpf2go.
# Installs clang 14 (Debian 12) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v clang >/dev/null || ! command -v llvm-strip >/dev/null; then
  echo "installing clang, llvm, libbpf-dev" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev >/dev/null
fi
(cd bpf && go generate ./)
echo "regenerated bpf/ bindings with $(clang --version | head -1)" >&2
