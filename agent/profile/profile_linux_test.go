package profile

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pprof "github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/agent/sampler"
	"github.com/fleetprof/fleetprof/internal/testutil"
)

// repoRoot finds the module root via FLEETPROF_ROOT or by walking up to go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	if r := os.Getenv("FLEETPROF_ROOT"); r != "" {
		return r
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// buildWorkloads compiles the C workload with frame pointers and the Go
// one stripped, into a temp dir.
func buildWorkloads(t *testing.T) (cBin, goBin string) {
	t.Helper()
	root := repoRoot(t)
	dir := t.TempDir()
	cBin = filepath.Join(dir, "cpuwork")
	goBin = filepath.Join(dir, "gocpuwork")
	cmds := []*exec.Cmd{
		exec.CommandContext(t.Context(), "gcc", "-O1", "-fno-omit-frame-pointer", "-o", cBin, filepath.Join(root, "test/workload/cpu.c")),
		exec.CommandContext(t.Context(), "go", "build", "-ldflags=-s -w", "-o", goBin, "./test/workload/gocpu"),
	}
	for _, c := range cmds {
		c.Dir = root
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
	}
	return cBin, goBin
}

func start(t *testing.T, bin string, args ...string) uint32 {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return uint32(cmd.Process.Pid)
}

// leafShares returns, per leaf function name, its share of the profile's
// samples, and the share of samples whose leaf has a function name.
func leafShares(p *pprof.Profile) (map[string]float64, float64, int64) {
	byFn := map[string]int64{}
	var total, resolved int64
	for _, s := range p.Sample {
		n := s.Value[0]
		total += n
		if len(s.Location) == 0 || len(s.Location[0].Line) == 0 {
			continue
		}
		resolved += n
		byFn[s.Location[0].Line[0].Function.Name] += n
	}
	shares := map[string]float64{}
	for fn, n := range byFn {
		shares[fn] = float64(n) / float64(total)
	}
	return shares, float64(resolved) / float64(max(total, 1)), total
}

func TestWorkloadProfiles(t *testing.T) {
	testutil.RequireBPF(t)
	cBin, goBin := buildWorkloads(t)

	b, err := NewBuilder(BuilderOptions{Node: "test-node"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const hz = 499
	s, err := sampler.New(sampler.Options{FrequencyHz: hz, Window: 8 * time.Second, OnNewPID: b.Observe})
	if err != nil {
		t.Fatalf("sampler.New: %v", err)
	}
	defer s.Close()

	pids := map[uint32]string{
		start(t, cBin, "cpu", "60"):      "c",
		start(t, goBin, "60"):            "go",
		start(t, cBin, "syscalls", "60"): "syscalls",
	}
	target := func(pid uint32) (map[string]string, bool) {
		name, ok := pids[pid]
		return map[string]string{"workload": name}, ok
	}

	// The first window is checked in full. The 3:1 split is a sampling
	// statistic: on a loaded machine the workloads may get little CPU,
	// so more windows are added (up to 4) until each CPU workload has
	// 600 samples, for a standard error below 2 points.
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	var profiles []Profile
	var later []Profile
	var buildErr error
	var window *sampler.Window
	windows := 0
	enough := func() bool {
		n := map[string]int64{}
		for _, pr := range append(profiles, later...) {
			n[pr.Labels["workload"]] += pr.Samples
		}
		return n["c"] >= 600 && n["go"] >= 600
	}
	if err := s.Run(ctx, func(w *sampler.Window) {
		ps, err := b.Build(w, target)
		if err != nil {
			buildErr = err
			cancel()
			return
		}
		windows++
		if window == nil {
			window, profiles = w, ps
		} else {
			later = append(later, ps...)
		}
		if windows >= 4 || enough() {
			cancel()
		}
	}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if buildErr != nil {
		t.Fatalf("Build: %v", buildErr)
	}
	if window == nil {
		t.Fatal("no window within 45s")
	}
	if len(profiles) != 3 {
		t.Fatalf("got %d profiles, want 3 (one per workload)", len(profiles))
	}

	byName := map[string]*pprof.Profile{}
	for _, pr := range profiles {
		name := pr.Labels["workload"]
		pid, _ := strconv.Atoi(pr.Labels["pid"])
		if pids[uint32(pid)] != name {
			t.Errorf("profile labels %v: pid does not match workload", pr.Labels)
		}
		if pr.Labels["node"] != "test-node" || pr.Labels["comm"] == "" || !strings.HasPrefix(filepath.Base(pr.Labels["exe"]), map[string]string{"c": "cpuwork", "syscalls": "cpuwork", "go": "gocpuwork"}[name]) {
			t.Errorf("profile labels %v: want node, comm and the workload's exe", pr.Labels)
		}
		if !pr.Start.Equal(window.Start) || pr.Duration != window.End.Sub(window.Start) {
			t.Errorf("profile time %v+%v, want the window's %v+%v", pr.Start, pr.Duration, window.Start, window.End.Sub(window.Start))
		}
		p, err := pprof.ParseData(pr.Data)
		if err != nil {
			t.Fatalf("parse profile %s: %v", name, err)
		}
		if err := p.CheckValid(); err != nil {
			t.Errorf("profile %s: CheckValid: %v", name, err)
		}
		if p.Period != int64(time.Second)/hz || p.PeriodType.Type != "cpu" || len(p.SampleType) != 2 ||
			p.SampleType[0].Type != "samples" || p.SampleType[0].Unit != "count" ||
			p.SampleType[1].Type != "cpu" || p.SampleType[1].Unit != "nanoseconds" {
			t.Errorf("profile %s: period %d %v, sample types %v", name, p.Period, p.PeriodType, p.SampleType)
		}
		if p.TimeNanos != window.Start.UnixNano() || p.DurationNanos <= 0 {
			t.Errorf("profile %s: time %d duration %d", name, p.TimeNanos, p.DurationNanos)
		}
		var total int64
		for _, smp := range p.Sample {
			total += smp.Value[0]
			if smp.Value[1] != smp.Value[0]*p.Period {
				t.Errorf("profile %s: sample value %v, want cpu = count x period", name, smp.Value)
			}
		}
		if total != pr.Samples {
			t.Errorf("profile %s: Samples = %d, pprof holds %d", name, pr.Samples, total)
		}
		for i, l := range p.Location {
			if l.ID != uint64(i+1) {
				t.Errorf("profile %s: location ids not 1..N", name)
				break
			}
		}
		byName[name] = p
	}

	for _, tc := range []struct {
		name, alpha, beta string
	}{
		{"c", "burn_alpha", "burn_beta"},
		{"go", "main.burnAlpha", "main.burnBeta"},
	} {
		p := byName[tc.name]
		if p == nil {
			t.Errorf("no profile for %s", tc.name)
			continue
		}
		// After one window: both names are there.
		if shares, _, _ := leafShares(p); shares[tc.alpha] == 0 || shares[tc.beta] == 0 {
			t.Errorf("%s: first window's leaf functions %v lack %s or %s", tc.name, shares, tc.alpha, tc.beta)
			continue
		}
		all := []*pprof.Profile{p}
		for _, pr := range later {
			if pr.Labels["workload"] == tc.name {
				lp, err := pprof.ParseData(pr.Data)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, lp)
			}
		}
		merged, err := pprof.Merge(all)
		if err != nil {
			t.Fatalf("merge %s: %v", tc.name, err)
		}
		shares, resolved, total := leafShares(merged)
		a, bb := shares[tc.alpha], shares[tc.beta]
		t.Logf("%s: %d windows, %d samples, %s %.3f, %s %.3f, resolved leaves %.3f", tc.name, len(all), total, tc.alpha, a, tc.beta, bb, resolved)
		if total < 200 {
			t.Errorf("%s: only %d samples in %d windows: machine too loaded to judge the split", tc.name, total, len(all))
		}
		if split := a / (a + bb); split < 0.70 || split > 0.80 {
			t.Errorf("%s: %s share of the two = %.3f, want 0.75 ± 0.05", tc.name, tc.alpha, split)
		}
		if resolved < 0.95 {
			t.Errorf("%s: %.3f of samples have a resolved leaf, want >= 0.95", tc.name, resolved)
		}
		var buildID bool
		for _, m := range p.Mapping {
			if strings.Contains(m.File, "cpuwork") && len(m.BuildID) == 40 {
				buildID = true
			}
		}
		if !buildID {
			t.Errorf("%s: no mapping of the workload with a GNU build id: %v", tc.name, p.Mapping)
		}
	}

	// Kernel-heavy: kernel frames resolved from kallsyms.
	if p := byName["syscalls"]; p != nil {
		var total, kernelNamed int64
		sysFns := map[string]bool{}
		for _, smp := range p.Sample {
			total += smp.Value[0]
			named := false
			for _, l := range smp.Location {
				if l.Mapping != nil && l.Mapping.File == kernelMappingFile && len(l.Line) > 0 {
					named = true
					if fn := l.Line[0].Function.Name; strings.Contains(fn, "sys_") {
						sysFns[fn] = true
					}
				}
			}
			if named {
				kernelNamed += smp.Value[0]
			}
		}
		t.Logf("syscalls: %d samples, %d with named kernel frames, syscall functions %v", total, kernelNamed, sysFns)
		if kernelNamed*2 < total {
			t.Errorf("syscalls: %d of %d samples have named kernel frames, want most", kernelNamed, total)
		}
		if len(sysFns) == 0 {
			t.Error("syscalls: no kernel function with sys_ in its name")
		}
	}

	// The profile opens in go tool pprof.
	path := filepath.Join(t.TempDir(), "c.pb.gz")
	for _, pr := range profiles {
		if pr.Labels["workload"] == "c" {
			if err := os.WriteFile(path, pr.Data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, err := exec.CommandContext(t.Context(), "go", "tool", "pprof", "-top", path).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -top: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("burn_alpha")) || !bytes.Contains(out, []byte("burn_beta")) {
		t.Errorf("go tool pprof -top lacks the workload functions:\n%s", out)
	}
}
