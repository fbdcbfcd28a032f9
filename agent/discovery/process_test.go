package discovery

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestProcessRegexRealProcs selects real host processes by comm and exe.
func TestProcessRegexRealProcs(t *testing.T) {
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "fp-sleeper")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	want := map[string]string{"node": "h", "pid": strconv.Itoa(pid), "comm": "fp-sleeper", "exe": exe}

	for _, s := range []Selector{{Comm: "^fp-sleep"}, {Exe: "/fp-sleeper$"}} {
		sel, err := s.Compile()
		if err != nil {
			t.Fatal(err)
		}
		ix := NewIndex(IndexOptions{Node: "h", Settings: Settings{Selection: sel}})
		got, ok := ix.Lookup(uint32(pid))
		if d := cmp.Diff(want, got); !ok || d != "" {
			t.Errorf("%+v: Lookup(%d) ok=%v (-want +got):\n%s", s, pid, ok, d)
		}
		if l, ok := ix.Lookup(uint32(os.Getpid())); ok {
			t.Errorf("%+v: the test process is selected: %v", s, l)
		}
	}
	// Whole host: every process, the test's own included.
	ix := NewIndex(IndexOptions{Node: "h"})
	if got, ok := ix.Lookup(uint32(pid)); !ok || cmp.Diff(want, got) != "" {
		t.Errorf("whole host: Lookup(%d) = %v, %v", pid, got, ok)
	}
	if l, ok := ix.Lookup(uint32(os.Getpid())); !ok || l["pid"] != strconv.Itoa(os.Getpid()) {
		t.Errorf("whole host: Lookup(self) = %v, %v", l, ok)
	}
	// A pid that does not exist is never a target.
	if l, ok := ix.Lookup(1 << 30); ok {
		t.Errorf("Lookup(no such pid) = %v", l)
	}
}
