package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/release"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/test/fleettest"
	"github.com/fleetprof/fleetprof/test/harness"
)

// buildAgentVersion builds fleetprof-agent with version v into dir.
func buildAgentVersion(t *testing.T, dir, v string) string {
	t.Helper()
	out := filepath.Join(dir, "fleetprof-agent-"+v)
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X github.com/fleetprof/fleetprof/internal/version.Version="+v, "./agent/cmd/fleetprof-agent")
	cmd.Dir = fleettest.Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build agent %s: %v\n%s", v, err, b)
	}
	return out
}

// buildCrasher builds a program that exits 1 at once: a release whose
// binary cannot even start.
func buildCrasher(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "crash")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Exit(1) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module crash\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "fleetprof-agent-v3")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build crasher: %v\n%s", err, b)
	}
	return out
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func fileSum(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestAgentUpgradeUnderSystemd upgrades two agents that run as units of
// a real systemd (Restart=always, ExecStartPre guard with the kept
// previous binary) from v1 to v2 by a staged release rollout, then rolls
// out a v3 whose binary exits 1 at start: the canary restores v2 by
// itself, reports INSTALL_FAILED and the rollout halts before the wave.
func TestAgentUpgradeUnderSystemd(t *testing.T) {
	sd := harness.StartSystemd(t)
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "upgrades")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")

	// systemd has private /tmp and /var/tmp: the hosts' files live in /var/lib.
	root, err := os.MkdirTemp("/var/lib", "fleetprof-upgrade-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	v1 := buildAgentVersion(t, root, "v1")
	v2 := buildAgentVersion(t, root, "v2")
	v3 := buildCrasher(t, root)

	units := []string{"fleetprof-agent-a.service", "fleetprof-agent-b.service"}
	exes := map[string]string{}
	for i, u := range units {
		dir := filepath.Join(root, fmt.Sprintf("host-%d", i))
		if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
			t.Fatal(err)
		}
		exe := filepath.Join(dir, "fleetprof-agent")
		copyFile(t, v1, exe)
		exes[u] = exe
		state := filepath.Join(dir, "state")
		_, err := sd.Exec(t.Context(), "systemd-run", "--unit="+u,
			"-p", "Restart=always", "-p", "RestartSec=1", "-p", "StartLimitIntervalSec=0",
			"-p", "ExecStartPre=-"+exe+".prev upgrade-guard --state-dir="+state,
			"--", exe, "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--state-dir", state,
			"--http-address", "", "--node", fmt.Sprintf("host-%d", i), "--profiling-duration", "2s")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sd.StopUnit(context.Background(), u) })
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, u := range units {
			out, _ := sd.Exec(context.Background(), "journalctl", "--no-pager", "-n", "60", "-u", u)
			t.Logf("journal of %s:\n%s", u, out)
		}
		t.Logf("fleet log:\n%s", lastBytes(f.Log(), 4000))
	})
	c := f.Client()
	ctx := t.Context()
	agents := func() []*store.Agent {
		var out []*store.Agent
		raw, err := c.Raw(ctx, "/api/v1/projects/"+project+"/agents")
		if err != nil {
			return nil
		}
		var env struct {
			Data json.RawMessage `json:"data"`
		}
		if json.Unmarshal(raw, &env) != nil {
			return nil
		}
		if json.Unmarshal(env.Data, &out) == nil {
			return out
		}
		var page struct {
			Agents []*store.Agent `json:"agents"`
			Items  []*store.Agent `json:"items"`
		}
		_ = json.Unmarshal(env.Data, &page)
		return append(page.Agents, page.Items...)
	}
	waitVersions := func(want string, within time.Duration) {
		t.Helper()
		fleettest.Eventually(t, within, "both agents on "+want, func() (bool, string) {
			as := agents()
			n := 0
			var seen []string
			for _, a := range as {
				seen = append(seen, fmt.Sprintf("%s:%s/%v/%v/%s", a.Hostname, a.Version, a.Connected, a.Healthy, a.Health))
				if a.Version == want && a.Connected && a.Healthy {
					n++
				}
			}
			return n == 2, strings.Join(seen, " ")
		})
	}
	waitVersions("v1", 60*time.Second)

	out := f.MustCLI("release", "upload", v2, "--version", "v2")
	if !strings.Contains(out, fileSum(v2)) {
		t.Fatalf("upload printed %q, want the sha256 %s", out, fileSum(v2))
	}
	f.MustCLI("release", "upload", v3, "--version", "v3")
	if _, err := f.CLI("release", "upload", v3, "--version", "v3"); err == nil {
		t.Fatal("a version was uploaded twice")
	}

	// v1 → v2: canary of 1, then a wave with the other.
	id := f.MustCLI("release", "rollout", "--project", project, "--version", "v2", "--selector", "platform=systemd", "--canary", "1", "--wave", "100")
	status := func(id string) *release.Status {
		st, err := c.ReleaseRollout(ctx, project, id)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	fleettest.Eventually(t, 120*time.Second, "v2 rollout completed", func() (bool, string) {
		st := status(id)
		return st.Status == "completed", fmt.Sprintf("%s %s %v %s", st.Status, st.StageName, st.Counts, st.Reason)
	})
	waitVersions("v2", 30*time.Second)
	for u, exe := range exes {
		if got := fileSum(exe); got != fileSum(v2) {
			t.Errorf("%s runs binary %s, want v2 %s", u, got, fileSum(v2))
		}
		if out, err := sd.Exec(ctx, "systemctl", "is-active", u); err != nil || strings.TrimSpace(out) != "active" {
			t.Errorf("%s is %q after the upgrade: %v", u, out, err)
		}
	}
	inv, err := c.Versions(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Versions) != 1 || inv.Versions[0].Version != "v2" || inv.Versions[0].Platform != "systemd" || inv.Versions[0].Agents != 2 {
		t.Fatalf("versions = %s", mustJSON(inv))
	}
	if out := f.MustCLI("agents", "versions", "--project", project); !strings.Contains(out, "v2") || !strings.Contains(out, "systemd") {
		t.Fatalf("agents versions printed %q", out)
	}

	// v2 → v3, whose binary exits 1 at start: the canary's guard restores
	// v2 and the rollout halts before the wave.
	id3 := f.MustCLI("release", "rollout", "--project", project, "--version", "v3", "--selector", "platform=systemd", "--canary", "1", "--wave", "100")
	var halted *release.Status
	fleettest.Eventually(t, 120*time.Second, "v3 rollout halted", func() (bool, string) {
		halted = status(id3)
		return halted.Status == "halted", fmt.Sprintf("%s %s %v %s", halted.Status, halted.StageName, halted.Counts, halted.Reason)
	})
	if !strings.Contains(halted.Reason, "canary failed") || !strings.Contains(halted.Reason, "crash loop") {
		t.Errorf("halt reason = %q, want the canary's crash loop", halted.Reason)
	}
	if halted.Counts["waiting"] != 1 {
		t.Errorf("counts = %v, want the wave agent still waiting", halted.Counts)
	}
	waitVersions("v2", 60*time.Second)
	for u, exe := range exes {
		if got := fileSum(exe); got != fileSum(v2) {
			t.Errorf("%s has binary %s after the failed v3, want v2 %s", u, got, fileSum(v2))
		}
	}
	// The canary reported the failure per OpAMP and is not offered v3 again.
	st := status(id3)
	for _, ra := range st.Agents {
		if ra.Stage == 0 && (ra.State != "failed" || !strings.Contains(ra.Error, "INSTALL_FAILED") && !strings.Contains(ra.Error, "failed")) {
			t.Errorf("canary row = %+v", ra)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
