#!/usr/bin/env bash
# Target discovery: 500 pods (real kube-apiserver) and 500 systemd units
# (real systemd) resolved to pids, against a plain scan of /proc/*/cgroup
# measured in the same run. Prints one markdown section.
set -euo pipefail
cd "${FLEETPROF_ROOT:-$(dirname "$0")/../..}"
export FLEETPROF_REQUIRE_PRIVILEGED=1
k=$(go test -count=1 -run '^$' -bench 'Resolve500Pods' -benchtime=1x ./agent/discovery/kubernetes/ 2>&1 | grep '^BenchmarkResolve500Pods' || true)
s=$(go test -count=1 -run '^$' -bench 'Resolve500Units' -benchtime=1x ./agent/discovery/systemd/ 2>&1 | grep '^BenchmarkResolve500Units' || true)
metric() { # line name
  awk -v m="$2" '{for (i = 2; i <= NF; i++) if ($i == m) print $(i-1)}' <<<"$1"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "## Target discovery (agent/discovery)"
echo
echo "Method: \`go test -bench Resolve500 -benchtime=1x\` in agent/discovery/kubernetes and"
echo "agent/discovery/systemd. Kubernetes: 500 pods on the node in a real kube-apiserver + etcd, each"
echo "with a real \`sleep\` in its own cri-containerd-<id>.scope cgroup; time from starting the informer to"
echo "the full target set (list + cgroup search), then reading cgroup.procs of every target, then 500 cold"
echo "Index lookups (read /proc/<pid>/cgroup, match). systemd: 500 transient services in a real systemd,"
echo "listed with their ControlGroup over D-Bus. Baseline: one plain read + parse of /proc/*/cgroup of every"
echo "process on the host, in the same run. Memory: live heap after GC, before and after the 500 targets."
echo
if [[ -z "$k" || -z "$s" ]]; then
  echo "Benchmark failed to run (kubernetes: ${k:-none}; systemd: ${s:-none})."
  exit 0
fi
kb=$(metric "$k" baseline-scan-ms); sb=$(metric "$s" baseline-scan-ms)
ktot=$(awk -v a="$(metric "$k" discover-ms)" -v b="$(metric "$k" resolve-pids-ms)" 'BEGIN{print a+b}')
stot=$(awk -v a="$(metric "$s" list-dbus-ms)" -v b="$(metric "$s" resolve-pids-ms)" 'BEGIN{print a+b}')
echo "| | 500 pods | 500 units |"
echo "|---|---|---|"
echo "| discover (informer list + cgroup search / D-Bus list + ControlGroup) | $(metric "$k" discover-ms) ms | $(metric "$s" list-dbus-ms) ms |"
echo "| resolve to pids (cgroup.procs) | $(metric "$k" resolve-pids-ms) ms | $(metric "$s" resolve-pids-ms) ms |"
echo "| 500 cold Index lookups | $(metric "$k" cold-lookups-ms) ms | $(metric "$s" cold-lookups-ms) ms |"
echo "| warm Index lookup | $(metric "$k" warm-lookup-ns) ns | |"
echo "| live heap for the 500 targets + Index | $(metric "$k" heap-MiB) MiB | $(metric "$s" heap-MiB) MiB |"
echo "| process RSS after (delta) | $(metric "$k" rss-MiB) MiB ($(metric "$k" rss-delta-MiB)) | $(metric "$s" rss-MiB) MiB ($(metric "$s" rss-delta-MiB)) |"
echo "| baseline: scan of /proc/*/cgroup ($(metric "$k" baseline-procs) / $(metric "$s" baseline-procs) processes) | $kb ms | $sb ms |"
echo "| baseline: heap of that scan | $(metric "$k" baseline-heap-MiB) MiB | |"
echo
echo "Ratio (discover + resolve) / baseline scan: pods $(ratio "$ktot" "$kb"), units $(ratio "$stot" "$sb")."
