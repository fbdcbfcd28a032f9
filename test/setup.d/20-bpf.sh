#!/usr/bin/env bash
# What the sampler tests need besides root: gcc and binutils (objcopy) to
# build the C test workload and its stripped variants at test time.
# clang/llvm/libbpf-dev (only for `make generate`) come from 00-apt.sh.
set -euo pipefail
missing=()
for p in gcc binutils libc6-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
