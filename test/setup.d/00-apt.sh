#!/usr/bin/env bash
# Debian packages the suite needs. apt-get update runs once, only when
# something is missing.
set -euo pipefail
pkgs=(etcd-server postgresql chromium chromium-driver clang llvm libbpf-dev bpftool systemd dbus gcc curl)
# kubectl: Debian's kubernetes-client, unless a kubectl is already there
# (some images ship one from another package that owns /usr/bin/kubectl).
command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    dpkg --configure -a
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi
