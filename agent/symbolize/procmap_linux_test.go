package symbolize

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestQueryExecMappingsMatchesMapsText checks that PROCMAP_QUERY yields
// exactly the executable mappings the maps text lists (but for x86's
// [vsyscall] page, which is no VMA), for this (Go) process and a
// dynamically linked C one.
//
// A process may map code while it is read (the dynamic loader of a
// just-started one does), so the query is compared only with a maps text
// that was the same just before and just after it.
func TestQueryExecMappingsMatchesMapsText(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	waitSleeping(t, sleep.Process.Pid)

	for _, pid := range []int{os.Getpid(), sleep.Process.Pid} {
		path := filepath.Join("/proc", strconv.Itoa(pid), "maps")
		var (
			got  []*Mapping
			text []byte
		)
		for attempt := 0; ; attempt++ {
			before := readFile(t, path)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err = queryExecMappings(f, make([]byte, procmapNameBytes))
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
			text = readFile(t, path)
			if bytes.Equal(before, text) {
				break
			}
			if attempt == 50 {
				t.Fatalf("pid %d: maps kept changing over 50 queries", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
		all, err := ParseMaps(bytes.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		var want []*Mapping
		for _, m := range all {
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

// waitSleeping waits until pid sleeps (state S), which a just-started
// sleep(1) reaches once the dynamic loader has mapped its libraries.
func waitSleeping(t *testing.T, pid int) {
	t.Helper()
	path := filepath.Join("/proc", strconv.Itoa(pid), "stat")
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat := readFile(t, path)
		// The state follows the command name's closing parenthesis.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'S' {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never went to sleep: %s", pid, stat)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
