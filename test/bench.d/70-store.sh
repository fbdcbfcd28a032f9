#!/usr/bin/env bash
# Fleet store write throughput: the same workload (8 concurrent writers of
# agent status updates, and of token creations) on the embedded SQLite
# store and on a real PostgreSQL started for the run, both durable
# (SQLite WAL + synchronous=NORMAL (durable across process crashes), PostgreSQL fsync=on). Prints one
# markdown section with the PostgreSQL/SQLite ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(FLEETPROF_PG_DURABLE=1 go test -run '^$' -bench '^BenchmarkWrites$' -benchtime 3s -count 1 ./fleet/store/postgres 2>&1) || {
  echo "$out" >&2
  exit 1
}
awk '
/^BenchmarkWrites\// {
  split($1, p, "/"); be = p[2]; op = p[3]; sub(/-[0-9]+$/, "", op)
  ns[be "/" op] = $3
}
END {
  print "## Fleet store writes: SQLite vs PostgreSQL"
  print ""
  print "Method: `go test -bench BenchmarkWrites ./fleet/store/postgres`: 8 concurrent writers"
  print "(2 cores) on one store; UpsertAgent updates existing agents at their row version"
  print "(what the OpAMP server writes on every status report), CreateToken inserts token"
  print "metadata. SQLite: embedded file, WAL, synchronous=NORMAL (durable across process crashes). PostgreSQL: local server"
  print "on loopback started for the run (initdb defaults, fsync on), pgx through database/sql."
  print "Both durable; same machine, same run."
  print ""
  print "| operation | SQLite writes/s | PostgreSQL writes/s | PostgreSQL / SQLite |"
  print "|---|---:|---:|---:|"
  n = split("UpsertAgent CreateToken", ops, " ")
  for (i = 1; i <= n; i++) {
    s = ns["sqlite/" ops[i]]; q = ns["postgres/" ops[i]]
    if (s == "" || q == "") continue
    printf "| %s | %.0f | %.0f | %.2f |\n", ops[i], 1e9 / s, 1e9 / q, s / q
  }
  s = ns["sqlite/StageStart"]; q = ns["postgres/StageStart"]
  if (s != "" && q != "") {
    print ""
    printf "A rollout stage start of 2,000 agents (`StageStart`: their rollout rows and config assignments in one transaction, %d rows per statement): SQLite %.1f µs per agent, PostgreSQL %.1f µs per agent (PostgreSQL at %.2f× the SQLite rate).\n", 500, s / 2000 / 1000, q / 2000 / 1000, s / q
  }
  print ""
  print "PostgreSQL pays a network round trip and a WAL flush per commit; its worth is"
  print "that several fleet replicas share it (leader lease, shared keys, cross-replica"
  print "revocation and config pushes), not single-node speed."
}' <<<"$out"
