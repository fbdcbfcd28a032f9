package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// TestMixedFleet enrolls two agents with one bootstrap token: one as a
// systemd service installed by install.sh in the real systemd, one as a
// Kubernetes node agent against the real kube-apiserver. Their platform
// labels tell them apart, and a rollout selected by platform=kubernetes
// reaches only the Kubernetes one.
func TestMixedFleet(t *testing.T) {
	h := startHost(t)
	k := startKube(t)
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "mixed")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "everywhere", "--scope", "enroll", "--labels", "env=prod")
	before := h.upper(t)
	t.Cleanup(func() { h.dumpOnFailure(t, "fleetprof-agent.service") })

	h.mustSh(t, installCommand(f.URL, boot, "--cluster", "dc-1"))
	kagent := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot,
		"--kubernetes", "--kubeconfig", k.Kubeconfig, "--node", "k8s-node-1", "--cluster", "kind-1")
	sd := waitAgent(t, f, project, "systemd", 30*time.Second, nil)
	kube := waitAgent(t, f, project, "kubernetes", 30*time.Second, nil)
	if sd.EnrolledWith == "" || sd.EnrolledWith != kube.EnrolledWith {
		t.Errorf("enrolled with %q and %q, want the same bootstrap token", sd.EnrolledWith, kube.EnrolledWith)
	}
	for _, c := range []struct {
		a                       *store.Agent
		platform, cluster, node string
	}{
		{sd, "systemd", "dc-1", sd.Labels["node"]},
		{kube, "kubernetes", "kind-1", "k8s-node-1"},
	} {
		l := c.a.Labels
		if l["platform"] != c.platform || l["cluster"] != c.cluster || l["node"] != c.node || l["env"] != "prod" {
			t.Errorf("%s agent labels %v, want platform=%s cluster=%s node=%s env=prod", c.platform, l, c.platform, c.cluster, c.node)
		}
	}

	cfg := filepath.Join(t.TempDir(), "k8s.yaml")
	if err := os.WriteFile(cfg, []byte("sampling: {frequency_hz: 29, duration: 5s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := f.MustCLI("config", "apply", "--project", project, "-f", cfg, "--selector", "platform=kubernetes")
	var st rollout.Status
	fleettest.Eventually(t, 60*time.Second, "rollout completed", func() (bool, string) {
		out, err := f.CLI("rollout", "status", id, "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, out
		}
		return st.Status == rollout.StatusCompleted, fmt.Sprintf("%s %v %s", st.Status, st.Counts, st.Reason)
	})
	if st.Targets != 1 {
		t.Errorf("rollout targeted %d agents, want 1 (the Kubernetes one)", st.Targets)
	}
	fleettest.Eventually(t, 20*time.Second, "config on the kubernetes agent only", func() (bool, string) {
		var kOK, sdUntouched bool
		var got []string
		for _, a := range agentsOf(t, f, project) {
			got = append(got, fmt.Sprintf("%s:%.12s/%s", a.Labels["platform"], a.ConfigHash, a.ConfigStatus))
			switch a.ID {
			case kube.ID:
				kOK = a.ConfigHash == st.ConfigHash && a.ConfigStatus == "APPLIED"
			case sd.ID:
				sdUntouched = a.ConfigHash != st.ConfigHash
			}
		}
		return kOK && sdUntouched, fmt.Sprint(got)
	})
	if kagent.Exited() {
		t.Fatalf("kubernetes agent exited:\n%s", kagent.Log())
	}
	uninstall(t, h, f, before)
}
