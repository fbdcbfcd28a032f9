#!/usr/bin/env bash
# `make run`: a fleet server with its embedded store on DATA_DIR, plus a
# local agent enrolled into it. Prints the console URL and the admin
# token; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-$PWD/.cache/run}"
addr="${2:-127.0.0.1:8080}"
url="http://$addr"
mkdir -p "$data" "$data/agent"
./dist/fleetprof serve --data-dir "$data/fleet" --http-address "$addr" >"$data/fleet.log" 2>&1 &
fleet=$!
agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null || true
  kill "$fleet" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$fleet" 2>/dev/null || { cat "$data/fleet.log"; exit 1; }
  sleep 0.1
done
export FLEETPROF_ADMIN_TOKEN="$(cat "$data/fleet/admin-token")" FLEETPROF_SERVER="$url"
project="$(./dist/fleetprof project list -o json | sed -n 's/.*"id": "\([^"]*\)".*/\1/p' | head -1)"
[ -n "$project" ] || project="$(./dist/fleetprof project create default)"
if [ ! -s "$data/agent/credential" ]; then
  boot="$(./dist/fleetprof token create --project "$project" --name local-agent --scope enroll --labels env=local --ttl 1h)"
  set -- --bootstrap-token "$boot"
else
  set --
fi
./dist/fleetprof-agent --fleet-address "$url" --insecure --state-dir "$data/agent" \
  --http-address 127.0.0.1:7071 "$@" >"$data/agent.log" 2>&1 &
agent=$!
cat <<MSG

  fleetprof is running.

  console:      $url
  admin token:  $data/fleet/admin-token
                (export FLEETPROF_ADMIN_TOKEN=\$(cat $data/fleet/admin-token))
  project:      $project
  local agent:  http://127.0.0.1:7071/readyz   (logs: $data/agent.log)
  fleet logs:   $data/fleet.log

  try:  ./dist/fleetprof agents list --project $project

  Ctrl-C stops both.
MSG
wait "$fleet"
