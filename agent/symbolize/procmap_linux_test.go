package symbolize

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestQueryExecMappingsMatchesMapsText checks that PROCMAP_QUERY yields
// exactly the executable mappings the maps text lists (but for x86's
// [vsyscall] page, which is no VMA), for this (Go) process and a
// dynamically linked C one.
func TestQueryExecMappingsMatchesMapsText(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })

	for _, pid := range []int{os.Getpid(), sleep.Process.Pid} {
		path := filepath.Join("/proc", strconv.Itoa(pid), "maps")
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := queryExecMappings(f, make([]byte, procmapNameBytes))
		f.Close()
		if errors.Is(err, errNoProcmapQuery) {
			if os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" {
				t.Fatalf("CI kernels have PROCMAP_QUERY: %v", err)
			}
			t.Skipf("kernel without PROCMAP_QUERY (Linux < 6.11): %v", err)
		}
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		f, err = os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		text, err := ParseMaps(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var want []*Mapping
		for _, m := range text {
			if m.Path != "[vsyscall]" {
				want = append(want, m)
			}
		}
		if len(want) == 0 {
			t.Fatalf("pid %d: no executable mappings in the text", pid)
		}
		if d := cmp.Diff(want, got, cmpopts.IgnoreUnexported(Mapping{})); d != "" {
			t.Errorf("pid %d: PROCMAP_QUERY (-text +query):\n%s", pid, d)
		}
	}
}
