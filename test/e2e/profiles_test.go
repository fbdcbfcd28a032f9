package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/internal/testutil"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// buildWorkload compiles test/workload/cpu.c with frame pointers.
func buildWorkload(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fpworkload")
	cmd := exec.Command("gcc", "-O1", "-fno-omit-frame-pointer", "-o", out, filepath.Join(fleettest.Root(), "test/workload/cpu.c"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

// TestProfilesEndToEnd: a real agent (real eBPF sampler) enrolled into a
// real fleet uploads over Parca WriteRaw; the merged profile the CLI
// returns holds the workload's function names and opens in go tool pprof.
func TestProfilesEndToEnd(t *testing.T) {
	testutil.RequireBPF(t)
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "profiles")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	bin := buildWorkload(t)
	wl := exec.Command(bin, "cpu", "60")
	if err := wl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wl.Process.Kill(); _ = wl.Wait() })
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	ag := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot,
		"--profiling-duration", "2s", "--profiling-cpu-sampling-frequency", "99", "--node", "e2e-node")
	var prof *profile.Profile
	fleettest.Eventually(t, 40*time.Second, "merged profile with the workload's functions", func() (bool, string) {
		out, err := f.CLI("profiles", "query", "--project", project, "--query", `{comm="fpworkload"}`,
			"--from", from, "--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339), "-o", "pprof")
		if err != nil {
			return false, err.Error() + "\nagent log:\n" + tail(ag.Log(), 15)
		}
		p, err := profile.Parse(bytes.NewReader([]byte(out)))
		if err != nil {
			return false, err.Error()
		}
		prof = p
		names := map[string]bool{}
		for _, fn := range p.Function {
			names[fn.Name] = true
		}
		return names["burn_alpha"] && names["burn_beta"], strings.Join(keys(names), ",")
	})
	if prof.SampleType[0].Type != "samples" && prof.SampleType[len(prof.SampleType)-1].Unit != "nanoseconds" {
		t.Errorf("sample types %v", prof.SampleType)
	}
	// The file the CLI wrote opens in go tool pprof.
	path := filepath.Join(t.TempDir(), "out.pb.gz")
	out, err := f.CLI("profiles", "query", "--project", project, "--query", `{comm="fpworkload", node="e2e-node"}`, "--from", from, "-o", "pprof")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	top, err := exec.Command("go", "tool", "pprof", "-top", path).CombinedOutput()
	if err != nil || !strings.Contains(string(top), "burn_alpha") {
		t.Fatalf("go tool pprof -top: %v\n%s", err, top)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
