package browser

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/test/fleettest"
)

const (
	// ingestedFunc is the leaf of the pprof the test ingests with the API
	// token it created in the console.
	ingestedFunc = "main.fleetprofConsoleCanary"
	// workloadFunc burns CPU in test/workload/gocpu while the agent runs.
	workloadFunc = "main.burnAlpha"
)

// requirements fails (under FLEETPROF_REQUIRE_PRIVILEGED=1) or skips when
// node, chromium or the npm packages are missing.
func requirements(t *testing.T, dir string) (node, chromium string) {
	t.Helper()
	missing := func(what string) {
		msg := what + " missing: run test/setup.d/40-browser.sh"
		if os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node")
	}
	chromium = os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		missing("chromium")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core")); err != nil {
		missing("playwright-core (npm ci in test/browser)")
	}
	return node, chromium
}

// writePprof writes a small gzipped CPU profile whose hottest leaf is
// ingestedFunc.
func writePprof(t *testing.T, path string) {
	t.Helper()
	fnMain := &profile.Function{ID: 1, Name: "main.main", SystemName: "main.main", Filename: "main.go"}
	fnLeaf := &profile.Function{ID: 2, Name: ingestedFunc, SystemName: ingestedFunc, Filename: "main.go"}
	locMain := &profile.Location{ID: 1, Address: 0x1000, Line: []profile.Line{{Function: fnMain, Line: 10}}}
	locLeaf := &profile.Location{ID: 2, Address: 0x2000, Line: []profile.Line{{Function: fnLeaf, Line: 20}}}
	now := time.Now()
	p := &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType:    &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:        52631578,
		TimeNanos:     now.Add(-10 * time.Second).UnixNano(),
		DurationNanos: int64(10 * time.Second),
		Function:      []*profile.Function{fnMain, fnLeaf},
		Location:      []*profile.Location{locMain, locLeaf},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{locLeaf, locMain}, Value: []int64{150, 150 * 52631578}},
			{Location: []*profile.Location{locMain}, Value: []int64{40, 40 * 52631578}},
		},
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsole signs in, creates and deletes tokens, enrolls the real
// agent, watches it live, labels it (bulk action) and filters by the
// label, rotates it, counts it on the Versions page and rolls out a
// release, reads a flame graph, checks the audit log and the viewer role:
// all through the console in Chromium.
// FLEETPROF_UPDATE_SCREENSHOTS=1 writes the screenshots to
// docs/screenshots (else to a temporary directory).
func TestConsole(t *testing.T) {
	root := fleettest.Root()
	dir := filepath.Join(root, "test", "browser")
	node, chromium := requirements(t, dir)
	bins := fleettest.Binaries(t)
	f := fleettest.StartFleet(t)

	work := t.TempDir()
	pprofFile := filepath.Join(work, "canary.pb.gz")
	writePprof(t, pprofFile)

	// A CPU workload for the agent to sample (whole-host profiling).
	wl := filepath.Join(work, "gocpu")
	build := exec.Command("go", "build", "-o", wl, "./test/workload/gocpu")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build workload: %v\n%s", err, out)
	}
	workload := exec.Command(wl, "300")
	if err := workload.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = workload.Process.Kill(); _ = workload.Wait() })

	shots := filepath.Join(work, "screenshots")
	if os.Getenv("FLEETPROF_UPDATE_SCREENSHOTS") == "1" {
		shots = filepath.Join(root, "docs", "screenshots")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "run.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"FLEET_URL="+f.URL, "ADMIN_TOKEN="+f.AdminToken,
		"AGENT_BIN="+filepath.Join(bins, "fleetprof-agent"), "CLI_BIN="+filepath.Join(bins, "fleetprof"),
		"WORK_DIR="+work, "SCREENSHOTS="+shots, "CHROMIUM="+chromium,
		"PPROF_FILE="+pprofFile, "PPROF_FUNC="+ingestedFunc, "WORKLOAD_FUNC="+workloadFunc,
		"PROFILE_WAIT_MS=30000")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("browser run (%s):\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err != nil {
		t.Fatalf("browser run failed: %v\nfleet log tail:\n%s", err, tail(f.Log(), 4000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
