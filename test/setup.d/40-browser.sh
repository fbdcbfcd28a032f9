#!/usr/bin/env bash
# Browser tests of the console: Debian's chromium and node/npm, plus the
# pinned playwright-core from test/browser/package-lock.json (npm ci; it
# never downloads a browser of its own).
set -euo pipefail
root="${FLEETPROF_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
missing=()
command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cd "$root/test/browser"
if [[ ! -d node_modules/playwright-core ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
