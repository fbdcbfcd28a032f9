package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/deploy/systemd"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// TestUnitsVerify runs systemd-analyze verify on both units, with
// ExecStart pointing at freshly built binaries; any complaint (an unknown
// key, a bad value, a missing binary) fails.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze (apt-get install systemd): %v", err)
	}
	bins := fleettest.Binaries(t)
	dir := t.TempDir()
	var units []string
	for name, body := range map[string][]byte{"fleetprof-agent.service": systemd.AgentUnit, "fleetprof.service": systemd.FleetUnit} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.ReplaceAll(body, []byte("/usr/local/bin/"), []byte(bins+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	slices.Sort(units)
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check is real: a typo in a key is reported.
	bad := filepath.Join(dir, "typo.service")
	_ = os.WriteFile(bad, bytes.Replace(systemd.AgentUnit, []byte("ProtectSystem="), []byte("ProtectSystm="), 1), 0o644)
	if out, _ := exec.Command(analyze, "verify", bad).CombinedOutput(); !strings.Contains(string(out), "Unknown key") {
		t.Errorf("systemd-analyze verify did not notice a bad key: %s", out)
	}
}

// TestInstallScript checks install.sh without systemd: POSIX syntax under
// dash, the unit it carries is byte for byte fleetprof-agent.service, and
// option errors are clear.
func TestInstallScript(t *testing.T) {
	script := string(systemd.InstallScript)
	start := strings.Index(script, "<<'UNIT'\n")
	end := strings.Index(script, "\nUNIT\n")
	if start < 0 || end < start {
		t.Fatal("install.sh has no <<'UNIT' here-document")
	}
	if got := script[start+len("<<'UNIT'\n") : end+1]; got != string(systemd.AgentUnit) {
		t.Errorf("the unit in install.sh differs from fleetprof-agent.service; copy it over:\n%s", got)
	}
	if !strings.Contains(script, "\ndefault_fleet_address=\"\"\n") {
		t.Error("install.sh lost the default_fleet_address line the fleet fills in")
	}
	path := filepath.Join(t.TempDir(), "install.sh")
	if err := os.WriteFile(path, systemd.InstallScript, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("dash -n install.sh: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown option --bogus"},
		{[]string{"--fleet-address"}, "--fleet-address needs a value"},
		{[]string{"--help"}, "--bootstrap-token TOKEN"},
	} {
		out, _ := exec.Command("dash", append([]string{path}, tc.args...)...).CombinedOutput()
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("install.sh %v printed %q, want %q", tc.args, out, tc.want)
		}
	}
}

// installCommand is what the console shows for a host, run inside the
// test systemd: the script comes from the fleet, and so does the binary.
func installCommand(fleetURL, token string, extra ...string) string {
	return fmt.Sprintf("curl -fsSL %s/install.sh | sh -s -- --fleet-address %s --bootstrap-token %s %s",
		fleetURL, fleetURL, token, strings.Join(extra, " "))
}

// agentsOf lists a project's agents through the CLI.
func agentsOf(t *testing.T, f *fleettest.Fleet, project string) []*store.Agent {
	t.Helper()
	out, err := f.CLI("agents", "list", "--project", project, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var as []*store.Agent
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		t.Fatalf("agents list -o json: %v\n%s", err, out)
	}
	return as
}

// waitAgent waits until one connected agent of the platform is listed and
// satisfies ok, and returns it.
func waitAgent(t *testing.T, f *fleettest.Fleet, project, platform string, within time.Duration, ok func(*store.Agent) bool) *store.Agent {
	t.Helper()
	var got *store.Agent
	fleettest.Eventually(t, within, platform+" agent", func() (bool, string) {
		var seen []string
		for _, a := range agentsOf(t, f, project) {
			b, _ := json.Marshal(a)
			seen = append(seen, string(b))
			if a.Labels["platform"] == platform && a.Connected && a.CredentialID != "" && (ok == nil || ok(a)) {
				got = a
				return true, ""
			}
		}
		return false, strings.Join(seen, "\n")
	})
	return got
}

// capNames decodes a capability mask of /proc/PID/status.
func capNames(t *testing.T, hex string) []string {
	t.Helper()
	mask, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{2: "dac_read_search", 19: "sys_ptrace", 24: "sys_resource", 34: "syslog", 38: "perfmon", 39: "bpf", 40: "checkpoint_restore"}
	var out []string
	for bit := 0; bit < 64; bit++ {
		if mask&(1<<bit) != 0 {
			n, ok := names[bit]
			if !ok {
				n = fmt.Sprintf("cap%d", bit)
			}
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// procStatus returns fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestInstallInSystemd runs the console's install command inside a real
// systemd: the unit starts as root bounded to the sampler's
// capabilities, the agent enrolls into a fleet on loopback, reports
// platform=systemd and is healthy (its eBPF sampler runs under the unit's
// hardening). Running the command again keeps the same agent; --uninstall
// leaves nothing behind.
func TestInstallInSystemd(t *testing.T) {
	h := startHost(t)
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "hosts")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "hosts", "--scope", "enroll", "--labels", "team=perf")
	before := h.upper(t)
	t.Cleanup(func() { h.dumpOnFailure(t, "fleetprof-agent.service") })

	start := time.Now()
	out := h.mustSh(t, installCommand(f.URL, boot, "--cluster", "bare-metal"))
	t.Logf("install.sh:\n%s", out)
	a := waitAgent(t, f, project, "systemd", 30*time.Second, func(a *store.Agent) bool { return a.Healthy })
	t.Logf("installed, started, enrolled and healthy in %s", time.Since(start))
	// The eBPF sampler runs under the unit's hardening.
	fleettest.Eventually(t, 20*time.Second, "agent sampling", func() (bool, string) {
		log := h.journal(t, "fleetprof-agent.service")
		return strings.Contains(log, "\tsampling\t") && !strings.Contains(log, "sampler cannot run") &&
			!strings.Contains(log, "kernel frames will not be symbolized"), log
	})
	if a.Labels["cluster"] != "bare-metal" || a.Labels["team"] != "perf" {
		t.Errorf("labels %v, want cluster=bare-metal from install.sh and team=perf from the token", a.Labels)
	}

	// What was installed, and how.
	for p, mode := range map[string]os.FileMode{
		"/usr/local/bin/fleetprof-agent":              0o755,
		"/etc/systemd/system/fleetprof-agent.service": 0o644,
		"/etc/fleetprof/agent.env":                    0o644,
		"/etc/fleetprof/bootstrap-token":              0o600,
	} {
		st, err := os.Stat(h.path(p))
		if err != nil {
			t.Errorf("install.sh did not write %s: %v", p, err)
			continue
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", p, st.Mode().Perm(), mode)
		}
	}
	if tok, _ := os.ReadFile(h.path("/etc/fleetprof/bootstrap-token")); strings.TrimSpace(string(tok)) != boot {
		t.Error("bootstrap-token file does not hold the token")
	}
	if env, _ := os.ReadFile(h.path("/etc/fleetprof/agent.env")); strings.Contains(string(env), boot) {
		t.Error("agent.env holds the token (it would end up on the command line)")
	}
	if st := h.mustSh(t, "systemctl is-enabled fleetprof-agent.service"); st != "enabled" {
		t.Errorf("unit is %q, want enabled", st)
	}
	pid, err := h.sd.MainPID(t.Context(), "fleetprof-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	ps := procStatus(t, pid)
	if uid := strings.Fields(ps["Uid"]); len(uid) == 0 || uid[0] != "0" {
		t.Errorf("agent runs as uid %v, want root (bounded by CapabilityBoundingSet)", uid)
	}
	wantCaps := []string{"bpf", "checkpoint_restore", "dac_read_search", "perfmon", "sys_ptrace", "syslog"}
	if got := capNames(t, ps["CapEff"]); !slices.Equal(without(got, "sys_resource"), wantCaps) {
		t.Errorf("agent effective capabilities %v, want %v (+sys_resource where the host has it)", got, wantCaps)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmdline, []byte(boot)) {
		t.Error("the bootstrap token is on the agent's command line")
	}

	// Again, as an upgrade would: same agent, same credential, running.
	h.mustSh(t, installCommand(f.URL, boot, "--cluster", "bare-metal"))
	b := waitAgent(t, f, project, "systemd", 30*time.Second, nil)
	if b.ID != a.ID || b.CredentialID != a.CredentialID {
		t.Errorf("reinstall made agent %s/%s, want the enrolled %s/%s", b.ID, b.CredentialID, a.ID, a.CredentialID)
	}
	if n := len(agentsOf(t, f, project)); n != 1 {
		t.Errorf("%d agents after reinstall, want 1", n)
	}
	if pid2, _ := h.sd.MainPID(t.Context(), "fleetprof-agent.service"); pid2 == pid || pid2 == 0 {
		t.Errorf("agent pid %d after reinstall (was %d): want a restarted agent", pid2, pid)
	}

	uninstall(t, h, f, before)
	fleettest.Eventually(t, 10*time.Second, "agent disconnected", func() (bool, string) {
		as := agentsOf(t, f, project)
		return len(as) == 1 && !as[0].Connected, ""
	})
}

// uninstall runs the fleet's install.sh --uninstall and checks that
// nothing of the agent is left.
func uninstall(t *testing.T, h *host, f *fleettest.Fleet, before map[string]layerEntry) {
	t.Helper()
	h.mustSh(t, fmt.Sprintf("curl -fsSL %s/install.sh | sh -s -- --uninstall", f.URL))
	if left := h.leftovers(t, before); len(left) > 0 {
		slices.Sort(left)
		t.Errorf("uninstall left behind: %v", left)
	}
	if out, _ := h.sh(t, "systemctl show -P LoadState fleetprof-agent.service"); strings.TrimSpace(out) != "not-found" {
		t.Errorf("unit load state after uninstall: %q, want not-found", out)
	}
	if out, _ := h.sh(t, "pgrep -x fleetprof-agent || true"); strings.TrimSpace(out) != "" {
		t.Errorf("agent still running after uninstall: pids %s", out)
	}
}

func without(s []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(v string) bool { return v == drop })
}

// journal returns the log of the unit's current run.
func (h *host) journal(t *testing.T, unit string) string {
	t.Helper()
	out, _ := h.sh(t, "journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -P InvocationID "+unit+")")
	return out
}

// dumpOnFailure logs a unit's status and journal when t failed.
func (h *host) dumpOnFailure(t *testing.T, unit string) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := h.sd.Exec(ctx, "sh", "-c", "systemctl status --no-pager -l "+unit+"; journalctl --no-pager -n 60 -u "+unit)
	t.Logf("%s:\n%s", unit, out)
}
