package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// TestReplicasNotify: two replicas on one PostgreSQL whose store re-reads
// (revocations, assignments) are slowed to an hour, so only the bus
// between them can carry a change in time. Every request goes to replica
// B (the rollout leader), every agent is connected to replica A (agents
// heartbeat every 30 s): an on-demand rotation through B gives the agent
// on A a new credential in under 5 s, a revocation through B disconnects
// the agent on A in under 5 s (and the live events on B show it
// disconnected within 3 s), a rollout started on B is applied by the
// agent on A in under 3 s, and after PostgreSQL restarts the listeners
// reconnect and a later rotation still crosses in under 5 s.
func TestReplicasNotify(t *testing.T) {
	srv, dsn := startPG(t)
	env := []string{"FLEETPROF_TEST_REPLICA_FALLBACK=1h"}
	r1 := fleettest.StartFleetEnv(t, env, "--store", "postgres", "--postgres-dsn", dsn)
	r2 := fleettest.StartFleetEnv(t, env, "--store", "postgres", "--postgres-dsn", dsn)
	var a, b *fleettest.Fleet // b leads; agents connect to a
	fleettest.Eventually(t, 15*time.Second, "one replica leads", func() (bool, string) {
		switch {
		case strings.Contains(r1.Log(), "became leader"):
			a, b = r2, r1
		case strings.Contains(r2.Log(), "became leader"):
			a, b = r1, r2
		}
		return b != nil, ""
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica A log:\n%s\nreplica B log:\n%s", a.Log(), b.Log())
		}
	})

	project := b.MustCLI("project", "create", "notify")
	boot := b.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	start := func(node string) *fleettest.Agent {
		return fleettest.StartAgent(t, "", "--fleet-address", a.URL, "--insecure", "--bootstrap-token", boot, "--node", node, "--platform", "systemd")
	}
	start("a-rot")
	victim := start("a-victim")
	ids := connectedOn(t, b, project, "a-rot", "a-victim")
	// The victim runs on its stored credential alone (with a bootstrap
	// token it would re-enroll once revoked).
	victim.Stop()
	victim = fleettest.StartAgent(t, victim.StateDir, "--fleet-address", a.URL, "--insecure", "--node", "a-victim", "--platform", "systemd")
	connectedOn(t, b, project, "a-victim")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("revoked agent's log:\n%s", victim.Log())
		}
	})

	// rotate asks B to rotate the agent on A and waits until it runs on a
	// new credential.
	rotate := func(what string) time.Duration {
		t.Helper()
		old := agentByID(t, b, project, ids["a-rot"]).CredentialID
		var began time.Time
		fleettest.Eventually(t, 15*time.Second, "rotation request accepted by B", func() (bool, string) {
			began = time.Now()
			out, err := b.CLI("agents", "rotate-credentials", "--project", project, "--selector", "node=a-rot")
			return err == nil && strings.Contains(out, "rotation started for 1"), fmt.Sprint(out, err)
		})
		fleettest.Eventually(t, 5*time.Second, what, func() (bool, string) {
			ag := agentByID(t, b, project, ids["a-rot"])
			return ag.Connected && ag.CredentialID != old && ag.PendingCredentialID == "" && ag.RotationStatus == "rotated",
				fmt.Sprintf("connected=%v credential %s (was %s) rotation %q", ag.Connected, ag.CredentialID, old, ag.RotationStatus)
		})
		return time.Since(began)
	}
	t.Logf("agent on A rotated on demand through B in %s", rotate("agent on A rotated through B").Round(time.Millisecond))

	// An operator watches the live events on B while the agent on A is
	// revoked through B.
	events := watchAgents(t, b, project)
	select {
	case s := <-events:
		if st := s.Agents[ids["a-victim"]]; st == "" || st == "disconnected" {
			t.Fatalf("first live event on B: agent on A is %q", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no live event from B within 10s")
	}
	b.MustCLI("agents", "revoke", "--project", project, ids["a-victim"])
	revoked := time.Now()
	fleettest.Eventually(t, 5*time.Second, "agent on A disconnected by a revocation through B", func() (bool, string) {
		ag := agentByID(t, b, project, ids["a-victim"])
		return !ag.Connected, fmt.Sprintf("connected=%v", ag.Connected)
	})
	t.Logf("agent on A disconnected %s after its revocation through B", time.Since(revoked).Round(time.Millisecond))
	deadline := time.After(3 * time.Second)
	for seen := false; !seen; {
		select {
		case s, ok := <-events:
			if !ok {
				t.Fatal("event stream of B ended")
			}
			seen = s.Agents[ids["a-victim"]] == "disconnected"
		case <-deadline:
			t.Fatal("the live events of B did not show the agent on A disconnected within 3s of the revocation")
		}
	}
	t.Logf("live events on B showed the agent on A disconnected %s after the revocation", time.Since(revoked).Round(time.Millisecond))
	if !strings.Contains(a.Log(), "closing connection of revoked credential") {
		t.Error("replica A did not log closing the revoked credential's connection")
	}

	began := time.Now()
	id := b.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 23}\n"), "--selector", "node=a-rot")
	st := rolloutStatus(t, b, id)
	fleettest.Eventually(t, 3*time.Second, "rollout on B applied by the agent on A", func() (bool, string) {
		ag := agentByID(t, b, project, ids["a-rot"])
		return ag.ConfigHash == st.ConfigHash && ag.ConfigStatus == "APPLIED", fmt.Sprintf("%.12s %s", ag.ConfigHash, ag.ConfigStatus)
	})
	t.Logf("rollout started on B applied by the agent on A after %s", time.Since(began).Round(time.Millisecond))
	waitRollout(t, b, id, rollout.StatusCompleted, 15*time.Second)

	// PostgreSQL restarts: the agents stay connected, both listeners
	// reconnect, and the next rotation crosses again.
	ctx := t.Context()
	if err := srv.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]*fleettest.Fleet{"A": a, "B": b} {
		fleettest.Eventually(t, 15*time.Second, "listener of replica "+name+" reconnected", func() (bool, string) {
			return strings.Contains(f.Log(), "notification listener reconnected"), ""
		})
	}
	t.Logf("after the PostgreSQL restart: agent on A rotated through B in %s", rotate("agent on A rotated through B after the restart").Round(time.Millisecond))
}

// watchAgents streams the "agents" live events of a project from f until
// the test ends.
func watchAgents(t *testing.T, f *fleettest.Fleet, project string) <-chan console.AgentSummary {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL+"/api/v1/projects/"+project+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %s", resp.Status)
	}
	out := make(chan console.AgentSummary, 100)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		topic := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				topic = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && topic == "agents":
				var s console.AgentSummary
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &s) == nil {
					select {
					case out <- s:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	return out
}
