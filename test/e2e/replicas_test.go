package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/test/fleettest"
	"github.com/fleetprof/fleetprof/test/pg"
)

// startPG starts a PostgreSQL server for one test and returns it with
// the DSN of a fresh database.
func startPG(t *testing.T) (*pg.Server, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	srv, err := pg.Start(ctx)
	if err != nil {
		if !pg.Required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	dsn, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return srv, dsn
}

func pgFleet(t *testing.T, dsn string) *fleettest.Fleet {
	t.Helper()
	return fleettest.StartFleet(t, "--store", "postgres", "--postgres-dsn", dsn)
}

// connectedOn waits until the agents with these nodes are connected
// with their own credential and returns their ids by node.
func connectedOn(t *testing.T, f *fleettest.Fleet, project string, nodes ...string) map[string]string {
	t.Helper()
	ids := map[string]string{}
	fleettest.Eventually(t, 30*time.Second, fmt.Sprintf("agents %v connected", nodes), func() (bool, string) {
		clear(ids)
		var got []string
		for _, a := range agents(t, f, project) {
			if a.Connected && a.CredentialID != "" && a.PendingCredentialID == "" {
				ids[a.Labels["node"]] = a.ID
				got = append(got, a.Labels["node"])
			}
		}
		for _, n := range nodes {
			if ids[n] == "" {
				return false, strings.Join(got, ",")
			}
		}
		return true, ""
	})
	return ids
}

func agentByID(t *testing.T, f *fleettest.Fleet, project, id string) *store.Agent {
	t.Helper()
	for _, a := range agents(t, f, project) {
		if a.ID == id {
			return a
		}
	}
	t.Fatalf("agent %s not listed", id)
	return nil
}

// TestReplicas runs two fleet replicas on one PostgreSQL: tokens issued
// by one work on the other, a revocation through one replica closes an
// agent connected to the other within 5 s, a rollout started on the
// leader reaches agents connected to the other replica, and when the
// leader is SIGKILLed in a wave pause the other replica takes the lease
// and completes the rollout.
func TestReplicas(t *testing.T) {
	_, dsn := startPG(t)
	a := pgFleet(t, dsn)
	b := pgFleet(t, dsn)
	var leader, follower *fleettest.Fleet
	fleettest.Eventually(t, 15*time.Second, "one replica leads", func() (bool, string) {
		la, lb := strings.Contains(a.Log(), "became leader"), strings.Contains(b.Log(), "became leader")
		switch {
		case la && lb:
			t.Fatal("both replicas became leader")
		case la:
			leader, follower = a, b
		case lb:
			leader, follower = b, a
		}
		return leader != nil, ""
	})

	// State written through one replica is read through the other; a
	// bootstrap token issued by the leader enrolls agents on the follower
	// (one signing key, shared through the database).
	project := leader.MustCLI("project", "create", "replicas")
	if !strings.Contains(follower.MustCLI("project", "list"), project) {
		t.Fatal("the follower does not list a project created on the leader")
	}
	boot := leader.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	start := func(f *fleettest.Fleet, node, platform string) *fleettest.Agent {
		return fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", node, "--platform", platform)
	}
	start(follower, "f-1", "systemd")
	start(follower, "f-2", "systemd")
	victim := start(follower, "f-victim", "kubernetes")
	start(leader, "l-1", "kubernetes")
	ids := connectedOn(t, leader, project, "f-1", "f-2", "f-victim", "l-1")
	// The victim runs on its stored credential alone (an agent that still
	// holds a bootstrap token re-enrolls when its credential is revoked).
	victim.Stop()
	victim = fleettest.StartAgent(t, victim.StateDir, "--fleet-address", follower.URL, "--insecure", "--node", "f-victim", "--platform", "kubernetes")
	connectedOn(t, leader, project, "f-victim")

	// Revocation through the leader closes the follower's connection.
	leader.MustCLI("agents", "revoke", "--project", project, ids["f-victim"])
	revoked := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("leader log:\n%s\nfollower log:\n%s\nvictim log:\n%s", leader.Log(), follower.Log(), victim.Log())
		}
	})
	fleettest.Eventually(t, 5*time.Second, "revoked agent disconnected", func() (bool, string) {
		ag := agentByID(t, follower, project, ids["f-victim"])
		return !ag.Connected, fmt.Sprintf("connected=%v", ag.Connected)
	})
	t.Logf("agent on the follower revoked through the leader: disconnected after %s", time.Since(revoked).Round(time.Millisecond))
	fleettest.Eventually(t, 15*time.Second, "revoked agent told to re-enroll", func() (bool, string) {
		return strings.Contains(victim.Log(), "must be re-enrolled"), ""
	})
	time.Sleep(2 * time.Second)
	if ag := agentByID(t, leader, project, ids["f-victim"]); ag.Connected {
		t.Error("the revoked agent is connected again")
	}

	// A rollout started on the leader reaches the follower's agents (the
	// follower pushes what the leader assigned); the leader dies in the
	// wave pause, and the follower takes over and completes it.
	began := time.Now()
	id := leader.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 29}\n"),
		"--selector", "platform=systemd", "--canary", "1", "--wave", "100", "--wave-pause", "6s")
	var st *rollout.Status
	fleettest.Eventually(t, 30*time.Second, "canary applied", func() (bool, string) {
		st = rolloutStatus(t, follower, id)
		return st.Counts[rollout.AgentApplied] == 1 && st.NextStageAt != nil, fmt.Sprintf("%s stage %d %v", st.Status, st.Stage, st.Counts)
	})
	t.Logf("canary on the follower applied %s after apply on the leader", time.Since(began).Round(time.Millisecond))
	if st.Targets != 2 {
		t.Fatalf("rollout targets %d agents, want the 2 systemd agents", st.Targets)
	}
	leader.Kill()
	killed := time.Now()
	st = waitRollout(t, follower, id, rollout.StatusCompleted, 40*time.Second)
	t.Logf("leader SIGKILLed in the wave pause; the follower completed the rollout %s later", time.Since(killed).Round(time.Millisecond))
	if st.Counts[rollout.AgentApplied] != 2 {
		t.Errorf("completed with counts %v, want 2 applied", st.Counts)
	}
	if !strings.Contains(follower.Log(), "became leader") {
		t.Error("the follower never logged that it became leader")
	}
	for _, node := range []string{"f-1", "f-2"} {
		ag := agentByID(t, follower, project, ids[node])
		if ag.ConfigHash != st.ConfigHash || ag.ConfigStatus != "APPLIED" || !strings.Contains(ag.EffectiveConfig, "frequency_hz: 29") {
			t.Errorf("agent %s: %.12s %s, effective config:\n%s", node, ag.ConfigHash, ag.ConfigStatus, ag.EffectiveConfig)
		}
	}
}

// jti reads the id of a JWT without verifying it.
func jti(t *testing.T, raw string) string {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(raw), ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", raw)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		ID string `json:"jti"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// TestPostgresRestart restarts PostgreSQL under a fleet with connected
// agents while a client keeps creating tokens: the agents stay
// connected (no re-enrollment), requests during the outage fail, the
// fleet recovers by itself, and every token whose creation was
// acknowledged is there afterwards.
func TestPostgresRestart(t *testing.T) {
	srv, dsn := startPG(t)
	f := pgFleet(t, dsn)
	project := f.MustCLI("project", "create", "pgrestart")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	var ags []*fleettest.Agent
	for i := range 2 {
		ags = append(ags, fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot,
			"--node", fmt.Sprint("n-", i), "--platform", "systemd"))
	}
	before := connectedOn(t, f, project, "n-0", "n-1")

	var mu sync.Mutex
	var acked []string
	failed := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			out, err := f.CLI("token", "create", "--project", project, "--name", fmt.Sprint("w", i), "--scope", "write-profiles")
			mu.Lock()
			if err == nil {
				acked = append(acked, jti(t, out))
			} else {
				failed++
			}
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	})
	time.Sleep(time.Second)
	ctx := t.Context()
	if err := srv.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(3 * time.Second)
	if _, err := f.CLI("project", "list"); err == nil {
		t.Error("project list worked with PostgreSQL down")
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	t.Logf("PostgreSQL was down for %s", up.Sub(down).Round(time.Millisecond))
	fleettest.Eventually(t, 15*time.Second, "fleet serves again", func() (bool, string) {
		_, err := f.CLI("project", "list")
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("the fleet served again %s after PostgreSQL was back", time.Since(up).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d token creations acknowledged, %d refused", len(acked), failed)
	if failed == 0 {
		t.Error("no token creation failed while PostgreSQL was down")
	}

	var toks []*store.Token
	if err := json.Unmarshal([]byte(f.MustCLI("token", "list", "--project", project, "-o", "json")), &toks); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tk := range toks {
		have[tk.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Errorf("acknowledged token %s lost", id)
		}
	}
	for _, a := range ags {
		if a.Exited() {
			t.Errorf("agent %s exited", a.StateDir)
		}
	}
	after := connectedOn(t, f, project, "n-0", "n-1")
	if len(agents(t, f, project)) != 2 || after["n-0"] != before["n-0"] || after["n-1"] != before["n-1"] {
		t.Errorf("agents changed across the restart: %v → %v", before, after)
	}
	// The fleet still drives its connected agents: a config reaches both.
	id := f.MustCLI("config", "apply", "--project", project, "-f", writeConfig(t, "sampling: {frequency_hz: 31}\n"), "--selector", "platform=systemd")
	waitRollout(t, f, id, rollout.StatusCompleted, 30*time.Second)
}
