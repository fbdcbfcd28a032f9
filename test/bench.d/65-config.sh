#!/usr/bin/env bash
# What an agent spends on a pushed config: decode, validate, hash and
# encode its effective config, for the canonical YAML (the fleet's push
# before it sent JSON) and the canonical JSON (now). Prints one markdown
# section with the JSON/YAML ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(go test -run '^$' -bench '^BenchmarkApply$' -benchtime 2s -count 3 -benchmem ./internal/config 2>&1) || {
  echo "$out" >&2
  exit 1
}
awk '
/^BenchmarkApply\// {
  split($1, p, "/"); doc = p[2]; way = p[3]; sub(/-[0-9]+$/, "", way)
  k = doc "/" way
  # the median of the runs: keep them all, sort at the end
  runs[k] = runs[k] " " $3; n[k]++
  for (i = 4; i <= NF; i++) if ($(i+1) == "allocs/op") allocs[k] = $i
}
function median(s,   a, m, i, j, t) {
  m = split(s, a, " ")
  for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return a[int((m + 1) / 2)]
}
END {
  print "## Agent: applying a pushed config"
  print ""
  print "Method: `go test -bench BenchmarkApply ./internal/config`, the median of 3 runs of 2 s:"
  print "what an agent does with each push, per push: decode and validate the config, hash it"
  print "(to check the fleet'\''s hash), encode the effective config it reports. *YAML*: the"
  print "canonical YAML, pushed and reported as YAML (the fleet'\''s push before it sent JSON;"
  print "`config.Parse` reads a document twice: the strict decode, then the walk that rejects"
  print "empty list items). *JSON*: the canonical JSON, pushed and reported as JSON (now;"
  print "`config.ParseJSON`, go-json-experiment/json). *JSON read as YAML*: an agent that only"
  print "knows YAML given the JSON push. Documents: the ~1 KiB config of the scale bench, and"
  print "DESIGN.md'\''s example (selectors, labels). Same run, same machine."
  print ""
  print "| document | YAML µs (allocs) | JSON µs (allocs) | JSON / YAML | JSON read as YAML µs |"
  print "|---|---:|---:|---:|---:|"
  split("scale design", docs, " ")
  for (d = 1; d <= 2; d++) {
    y = median(runs[docs[d] "/yaml"]); j = median(runs[docs[d] "/json"]); o = median(runs[docs[d] "/json-as-yaml"])
    if (y == "" || j == "") continue
    printf "| %s | %.1f (%s) | %.1f (%s) | %.2f | %.1f |\n", docs[d], y / 1000, allocs[docs[d] "/yaml"], j / 1000, allocs[docs[d] "/json"], j / y, o / 1000
  }
}' <<<"$out"
