package sqlite_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
)

func TestConfigsAndRollouts(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, dir+"/f.db")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

	// Versions are numbered per project; a hash is stored once.
	for i, h := range []string{"aa", "bb"} {
		cv := &store.ConfigVersion{ID: "c" + h, ProjectID: "p", Hash: h, YAML: "x", CreatedAt: now}
		if err := st.CreateConfigVersion(ctx, cv); err != nil {
			t.Fatal(err)
		}
		if cv.Version != i+1 {
			t.Errorf("version %d, want %d", cv.Version, i+1)
		}
	}
	if err := st.CreateConfigVersion(ctx, &store.ConfigVersion{ID: "dup", ProjectID: "p", Hash: "aa", CreatedAt: now}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate hash: %v, want ErrConflict", err)
	}
	other := &store.ConfigVersion{ID: "q1", ProjectID: "q", Hash: "aa", CreatedAt: now}
	if err := st.CreateConfigVersion(ctx, other); err != nil || other.Version != 1 {
		t.Errorf("other project: version %d, %v; want 1", other.Version, err)
	}
	if cv, err := st.ConfigVersionByHash(ctx, "p", "bb"); err != nil || cv.ID != "cbb" {
		t.Errorf("by hash: %v %v", cv, err)
	}

	r := &store.Rollout{ID: "r1", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", Selector: "platform=systemd", Specificity: 1,
		Canary: 1, WavePause: 30 * time.Second, Stages: 2, Stage: -1, Status: "pending", CreatedAt: now, UpdatedAt: now}
	ras := []*store.RolloutAgent{
		{RolloutID: "r1", AgentID: "a1", Stage: 0, State: "waiting", UpdatedAt: now},
		{RolloutID: "r1", AgentID: "a2", Stage: 1, State: "waiting", UpdatedAt: now},
	}
	if err := st.CreateRollout(ctx, r, ras); err != nil {
		t.Fatal(err)
	}
	stale := *r
	next := *r
	next.Status, next.Stage, next.StageStartedAt = "running", 0, &now
	ch := &store.RolloutChange{
		Rollout: &next,
		Agents:  []*store.RolloutAgent{{RolloutID: "r1", AgentID: "a1", Stage: 0, State: "assigned", UpdatedAt: now}},
		Assign:  []*store.Assignment{{AgentID: "a1", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", RolloutID: "r1", UpdatedAt: now}},
	}
	if err := st.ApplyRolloutChange(ctx, ch); err != nil {
		t.Fatal(err)
	}
	// A write at the old version changes nothing, not even its agents.
	stale.Status = "paused"
	err = st.ApplyRolloutChange(ctx, &store.RolloutChange{Rollout: &stale,
		Assign: []*store.Assignment{{AgentID: "a2", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", UpdatedAt: now}}})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale write: %v, want ErrConflict", err)
	}
	if _, err := st.AssignmentByAgent(ctx, "a2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stale write left an assignment: %v", err)
	}

	// Everything survives a reopen (a fleet restart).
	st.Close()
	st, err = sqlite.Open(ctx, dir+"/f.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.RolloutByID(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	want := next
	want.RowVersion = 2
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("rollout after reopen (-want +got):\n%s", diff)
	}
	gotRas, err := st.ListRolloutAgents(ctx, "r1")
	if err != nil || len(gotRas) != 2 || gotRas[0].State != "assigned" || gotRas[1].State != "waiting" {
		t.Errorf("rollout agents: %+v %v", gotRas, err)
	}
	if a, err := st.AssignmentByAgent(ctx, "a1"); err != nil || a.ConfigHash != "aa" || a.RolloutID != "r1" {
		t.Errorf("assignment: %+v %v", a, err)
	}
	if rs, err := st.ListRollouts(ctx, store.RolloutFilter{ProjectID: "p", Statuses: []string{"running", "paused"}}); err != nil || len(rs) != 1 {
		t.Errorf("list running: %d %v", len(rs), err)
	}
	if err := st.ApplyRolloutChange(ctx, &store.RolloutChange{Unassign: []string{"a1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AssignmentByAgent(ctx, "a1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unassign: %v", err)
	}
}
