package testutil

import (
	"os"
	"testing"
)

// PrivilegedEnv is the environment variable that turns privileged-test
// skips into failures (CI sets it to 1).
const PrivilegedEnv = "FLEETPROF_REQUIRE_PRIVILEGED"

// RequireBPF skips t when the process cannot load eBPF programs and open
// perf events (not root, or the kernel has no eBPF). When
// FLEETPROF_REQUIRE_PRIVILEGED=1 the missing capability fails the test
// instead.
func RequireBPF(t testing.TB) {
	t.Helper()
	reason := bpfMissing()
	if reason == "" {
		return
	}
	if os.Getenv(PrivilegedEnv) == "1" {
		t.Fatalf("%s, and %s=1 forbids skipping", reason, PrivilegedEnv)
	}
	t.Skip(reason)
}

func bpfMissing() string {
	if os.Geteuid() != 0 {
		return "eBPF tests need root (CAP_BPF, CAP_PERFMON)"
	}
	if _, err := os.Stat("/proc/sys/kernel/bpf_stats_enabled"); err != nil {
		return "kernel has no eBPF syscall (CONFIG_BPF_SYSCALL)"
	}
	return ""
}
