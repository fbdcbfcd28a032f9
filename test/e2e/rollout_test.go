package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// pidOf finds the pid of the agent process that uses stateDir.
func pidOf(t *testing.T, stateDir string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		if len(args) > 0 && filepath.Base(string(args[0])) == "fleetprof-agent" && bytes.Contains(b, []byte("\x00"+stateDir+"\x00")) {
			return pid
		}
	}
	t.Fatalf("no fleetprof-agent process with state dir %s", stateDir)
	return 0
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func rolloutStatus(t *testing.T, f *fleettest.Fleet, id string) *rollout.Status {
	t.Helper()
	out, err := f.CLI("rollout", "status", id, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st rollout.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("rollout status -o json: %v\n%s", err, out)
	}
	return &st
}

func waitRollout(t *testing.T, f *fleettest.Fleet, id, status string, within time.Duration) *rollout.Status {
	t.Helper()
	var st *rollout.Status
	fleettest.Eventually(t, within, "rollout "+status, func() (bool, string) {
		st = rolloutStatus(t, f, id)
		return st.Status == status, fmt.Sprintf("%s stage %d %v %s", st.Status, st.Stage, st.Counts, st.Reason)
	})
	return st
}

// byPlatform returns the project's agents with the given platform label.
func byPlatform(t *testing.T, f *fleettest.Fleet, project, platform string) []*store.Agent {
	var out []*store.Agent
	for _, a := range agents(t, f, project) {
		if a.Labels["platform"] == platform {
			out = append(out, a)
		}
	}
	return out
}

// waitConfig waits until every agent of a platform reports hash APPLIED.
func waitConfig(t *testing.T, f *fleettest.Fleet, project, platform, hash string, n int, within time.Duration) []*store.Agent {
	t.Helper()
	var as []*store.Agent
	fleettest.Eventually(t, within, platform+" agents on "+hash[:12], func() (bool, string) {
		as = byPlatform(t, f, project, platform)
		ok := len(as) == n
		var got []string
		for _, a := range as {
			ok = ok && a.ConfigHash == hash && a.ConfigStatus == "APPLIED"
			got = append(got, fmt.Sprintf("%s=%.12s/%s", a.ID[:8], a.ConfigHash, a.ConfigStatus))
		}
		return ok, strings.Join(got, " ")
	})
	return as
}

// TestRolloutEndToEnd drives staged config rollouts through the real
// binaries: 3 systemd and 2 kubernetes agents, a selector that reaches
// exactly the 3, live apply (same pids), rejection of bad configs, a
// failing canary that halts before any wave and its rollback, a fleet
// SIGKILL in a wave pause that resumes, and a late host.
func TestRolloutEndToEnd(t *testing.T) {
	t.Setenv("FLEETPROF_TEST_FAIL_CONFIG", "fail-me")
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "rollouts")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll", "--labels", "cluster=e2e")
	var sdAgents []*fleettest.Agent
	var metricsURLs []string
	for i := range 3 {
		addr := fleettest.FreeAddr(t)
		metricsURLs = append(metricsURLs, "http://"+addr+"/metrics")
		sdAgents = append(sdAgents, fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot,
			"--node", fmt.Sprintf("sd-%d", i), "--platform", "systemd", "--http-address", addr))
	}
	// The sampler's own gauge shows the rate its perf events run at; it
	// exists only where the eBPF sampler runs (root, as in CI).
	privileged := os.Geteuid() == 0 || os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1"
	waitHz := func(hz int) {
		t.Helper()
		if !privileged {
			t.Logf("not root: sampler frequency not checked (effective config only)")
			return
		}
		for _, u := range metricsURLs {
			fleettest.Eventually(t, 20*time.Second, "sampler at "+fmt.Sprint(hz)+" Hz", func() (bool, string) {
				resp, err := http.Get(u)
				if err != nil {
					return false, err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				for _, line := range strings.Split(string(b), "\n") {
					if strings.HasPrefix(line, "fleetprof_sampler_frequency_hz ") {
						return strings.TrimSpace(strings.TrimPrefix(line, "fleetprof_sampler_frequency_hz ")) == fmt.Sprint(hz), line
					}
				}
				return false, "no fleetprof_sampler_frequency_hz in " + u
			})
		}
	}
	for i := range 2 {
		fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot,
			"--node", fmt.Sprintf("k8s-%d", i), "--platform", "kubernetes")
	}
	fleettest.Eventually(t, 30*time.Second, "5 agents connected", func() (bool, string) {
		n := 0
		for _, a := range agents(t, f, project) {
			if a.Connected && a.CredentialID != "" && a.PendingCredentialID == "" {
				n++
			}
		}
		return n == 5, fmt.Sprintf("%d connected", n)
	})
	waitHz(19)
	pids := map[string]int{}
	for _, a := range sdAgents {
		pids[a.StateDir] = pidOf(t, a.StateDir)
	}
	samePids := func(when string) {
		t.Helper()
		for _, a := range sdAgents {
			if a.Exited() || pidOf(t, a.StateDir) != pids[a.StateDir] {
				t.Fatalf("%s: agent %s restarted (config must apply live)", when, a.StateDir)
			}
		}
	}

	// v1 to platform=systemd reaches exactly the three systemd agents.
	start := time.Now()
	v1 := f.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 49, duration: 5s}\n"),
		"--selector", "platform=systemd", "--canary", "1", "--wave", "50")
	st := waitRollout(t, f, v1, rollout.StatusCompleted, 60*time.Second)
	t.Logf("v1: apply → completed in %s, stages %v", time.Since(start), st.StageSizes)
	if st.Targets != 3 || !cmpInts(st.StageSizes, []int{1, 2}) {
		t.Errorf("v1 targets %d stages %v, want 3 in [1 2]", st.Targets, st.StageSizes)
	}
	// The progress a poller asks for (?agents=false) is counted in the
	// store and says the same, without the agents.
	if sum, err := f.Client().RolloutProgress(t.Context(), v1); err != nil {
		t.Error(err)
	} else if sum.Targets != st.Targets || !cmpInts(sum.StageSizes, st.StageSizes) || fmt.Sprint(sum.Counts) != fmt.Sprint(st.Counts) || len(sum.Agents) != 0 || sum.Status != st.Status {
		t.Errorf("progress %+v, want the counts of %+v without agents", sum, st)
	}
	v1Hash := st.ConfigHash
	for _, a := range waitConfig(t, f, project, "systemd", v1Hash, 3, 20*time.Second) {
		if !strings.Contains(a.EffectiveConfig, "frequency_hz: 49") || !strings.Contains(a.EffectiveConfig, "duration: 5s") {
			t.Errorf("agent %s effective config does not show the new sampling:\n%s", a.ID, a.EffectiveConfig)
		}
	}
	for _, a := range byPlatform(t, f, project, "kubernetes") {
		if a.ConfigHash != "" || strings.Contains(a.EffectiveConfig, "frequency_hz: 49") {
			t.Errorf("kubernetes agent %s got the systemd config: %s %s", a.ID, a.ConfigHash, a.ConfigStatus)
		}
	}
	waitHz(49)
	samePids("after v1")
	for _, a := range sdAgents {
		b, err := os.ReadFile(filepath.Join(a.StateDir, "remote-config.yaml"))
		if err != nil || !strings.Contains(string(b), "frequency_hz: 49") {
			t.Errorf("agent %s did not persist the last good config: %v %q", a.StateDir, err, b)
		}
	}

	// Bad configs are refused with HTTP 400 naming the field; nothing rolls out.
	before := f.MustCLI("rollout", "list", "--project", project, "-o", "json")
	for _, tc := range []struct{ name, body, want string }{
		{"invalid YAML", "sampling: [\n", "invalid config syntax"},
		{"unknown field", "sampling: {frequncy_hz: 50}\n", "frequncy_hz"},
		{"out-of-range frequency", "sampling: {frequency_hz: 5000}\n", "sampling.frequency_hz: must be between 1 and 1000"},
	} {
		out, err := f.CLI("config", "apply", "--project", project, "-f", writeConfig(t, tc.body), "--selector", "platform=systemd")
		if err == nil || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: apply printed %q, err %v; want HTTP 400 naming %q", tc.name, out, err, tc.want)
		}
	}
	if after := f.MustCLI("rollout", "list", "--project", project, "-o", "json"); after != before {
		t.Errorf("rejected configs created rollouts:\n%s", after)
	}

	// v2 fails on the agent: the canary fails, the rollout halts before
	// any wave; rollback restores v1 everywhere.
	v2 := f.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 97}\nexternal_labels: {note: fail-me}\n"),
		"--selector", "platform=systemd", "--canary", "1", "--wave", "50")
	st = waitRollout(t, f, v2, rollout.StatusHalted, 30*time.Second)
	t.Logf("v2 halted: %s", st.Reason)
	if !strings.Contains(st.Reason, "canary failed") || !strings.Contains(st.Reason, "injected failure") || st.Stage != 0 {
		t.Errorf("halt reason %q at stage %d, want the canary's injected failure", st.Reason, st.Stage)
	}
	if st.Counts[rollout.AgentFailed] != 1 || st.Counts[rollout.AgentWaiting] != 2 {
		t.Errorf("v2 counts %v, want 1 failed canary and 2 waiting", st.Counts)
	}
	time.Sleep(time.Second)
	nOld := 0
	for _, a := range byPlatform(t, f, project, "systemd") {
		switch {
		case a.ConfigHash == v1Hash && a.ConfigStatus == "APPLIED":
			nOld++
		case a.ConfigHash == st.ConfigHash && a.ConfigStatus == "FAILED":
			if !strings.Contains(a.ConfigError, "injected failure") || !strings.Contains(a.EffectiveConfig, "frequency_hz: 49") {
				t.Errorf("failed canary: error %q, effective config should still be v1:\n%s", a.ConfigError, a.EffectiveConfig)
			}
		default:
			t.Errorf("agent %s at %.12s/%s during the halted v2", a.ID, a.ConfigHash, a.ConfigStatus)
		}
	}
	if nOld != 2 {
		t.Errorf("%d agents still on v1, want 2 (a wave started after the canary failed)", nOld)
	}
	f.MustCLI("rollout", "rollback", v2)
	waitConfig(t, f, project, "systemd", v1Hash, 3, 20*time.Second)
	if st := rolloutStatus(t, f, v2); st.Status != rollout.StatusRolledBack {
		t.Errorf("v2 status %s after rollback", st.Status)
	}
	samePids("after rollback")

	// v3 with a wave pause; the fleet is SIGKILLed during the pause and
	// resumes after restart. No agent ever runs a third config.
	v3 := f.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 71}\n"),
		"--selector", "platform=systemd", "--canary", "1", "--wave-count", "1", "--wave-pause", "4s")
	fleettest.Eventually(t, 30*time.Second, "v3 canary applied", func() (bool, string) {
		st = rolloutStatus(t, f, v3)
		return st.Counts[rollout.AgentApplied] == 1 && st.NextStageAt != nil, fmt.Sprint(st.Counts)
	})
	v3Hash := st.ConfigHash
	f.Kill()
	t.Log("fleet killed in the wave pause after the v3 canary")
	f.Start()
	seen := map[string]bool{}
	fleettest.Eventually(t, 90*time.Second, "v3 completed after the fleet restart", func() (bool, string) {
		for _, a := range byPlatform(t, f, project, "systemd") {
			if a.ConfigHash != "" {
				seen[a.ConfigHash] = true
			}
		}
		st = rolloutStatus(t, f, v3)
		return st.Status == rollout.StatusCompleted, fmt.Sprintf("%s %v %s", st.Status, st.Counts, st.Reason)
	})
	waitConfig(t, f, project, "systemd", v3Hash, 3, 20*time.Second)
	for h := range seen {
		if h != v1Hash && h != v3Hash {
			t.Errorf("an agent reported config %s, neither the old nor the new one", h)
		}
	}
	waitHz(71)
	samePids("after the fleet restart")

	// A host that enrolls later gets the config of its selector.
	late := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", "sd-late", "--platform", "systemd")
	waitConfig(t, f, project, "systemd", v3Hash, 4, 30*time.Second)
	_ = late

	audit := f.MustCLI("audit", "--project", project)
	for _, action := range []string{"config.apply", "rollout.rollback", "rollout.halt", "rollout.complete"} {
		if !strings.Contains(audit, action) {
			t.Errorf("audit log lacks %s:\n%s", action, audit)
		}
	}
}

func cmpInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
