package storetest

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/store"
)

func testReleases(t *testing.T, s store.Store) {
	rs, ok := s.(store.Releases)
	if !ok {
		t.Fatalf("%T does not implement store.Releases: every fleet store must (releases are fleet state)", s)
	}
	ctx := t.Context()
	r1 := &store.Release{Version: "v1.0.0", SHA256: "aa", Signature: []byte{1, 2}, Size: 10, Platform: "linux/amd64", CreatedAt: Now}
	r2 := &store.Release{Version: "v1.1.0", SHA256: "bb", Signature: []byte{3}, Size: 11, URL: "https://x/y", Platform: "linux/amd64", CreatedAt: Now.Add(time.Second)}
	must(t, rs.CreateRelease(ctx, r1))
	must(t, rs.CreateRelease(ctx, r2))
	wantErr(t, "duplicate version", rs.CreateRelease(ctx, &store.Release{Version: "v1.0.0", CreatedAt: Now}), store.ErrConflict)
	got, err := rs.ReleaseByVersion(ctx, "v1.1.0")
	must(t, err)
	if diff := cmp.Diff(r2, got); diff != "" {
		t.Errorf("ReleaseByVersion (-want +got):\n%s", diff)
	}
	_, err = rs.ReleaseByVersion(ctx, "v9")
	wantErr(t, "unknown release", err, store.ErrNotFound)
	if list, err := rs.ListReleases(ctx); err != nil || len(list) != 2 || list[0].Version != "v1.1.0" {
		t.Errorf("ListReleases, newest first: %v, %v", list, err)
	}

	ro := &store.ReleaseRollout{Version: "v1.1.0", Rollout: store.Rollout{ID: "rr1", ProjectID: "p", ConfigID: "v1.1.0", ConfigHash: "bb",
		Selector: "platform=systemd", Stages: 1, Stage: -1, Status: "pending", CreatedAt: Now, UpdatedAt: Now}}
	must(t, rs.CreateReleaseRollout(ctx, ro, []*store.RolloutAgent{{RolloutID: "rr1", AgentID: "a1", State: "waiting", UpdatedAt: Now}}))
	if ro.RowVersion != 1 {
		t.Errorf("release rollout version %d, want 1", ro.RowVersion)
	}
	stale := *ro
	next := *ro
	next.Status, next.Stage = "running", 0
	must(t, rs.ApplyReleaseRolloutChange(ctx, &store.ReleaseRolloutChange{Rollout: &next,
		Agents: []*store.RolloutAgent{{RolloutID: "rr1", AgentID: "a1", State: "assigned", UpdatedAt: Now}},
		Assign: []*store.ReleaseAssignment{{AgentID: "a1", ProjectID: "p", Version: "v1.1.0", RolloutID: "rr1", UpdatedAt: Now}}}))
	stale.Status = "paused"
	wantErr(t, "stale release rollout change", rs.ApplyReleaseRolloutChange(ctx, &store.ReleaseRolloutChange{Rollout: &stale,
		Assign: []*store.ReleaseAssignment{{AgentID: "a2", ProjectID: "p", Version: "v1.1.0", UpdatedAt: Now}}}), store.ErrConflict)
	_, err = rs.ReleaseAssignmentByAgent(ctx, "a2")
	wantErr(t, "assignment of a stale change", err, store.ErrNotFound)
	gotRo, err := rs.ReleaseRolloutByID(ctx, "rr1")
	must(t, err)
	if gotRo.Status != "running" || gotRo.RowVersion != 2 || gotRo.Version != "v1.1.0" {
		t.Errorf("release rollout after a change: %+v", gotRo)
	}
	if ras, err := rs.ListReleaseRolloutAgents(ctx, "rr1"); err != nil || len(ras) != 1 || ras[0].State != "assigned" {
		t.Errorf("release rollout agents: %+v, %v", ras, err)
	}
	if list, err := rs.ListReleaseRollouts(ctx, store.RolloutFilter{ProjectID: "p", Statuses: []string{"running"}}); err != nil || len(list) != 1 {
		t.Errorf("ListReleaseRollouts running: %d, %v", len(list), err)
	}

	// Install reports land on the assignment of that version only.
	must(t, rs.SetReleaseStatus(ctx, "a1", "v1.0.0", "INSTALLED", "", Now))
	must(t, rs.SetReleaseStatus(ctx, "nobody", "v1.1.0", "INSTALLED", "", Now))
	must(t, rs.SetReleaseStatus(ctx, "a1", "v1.1.0", "INSTALL_FAILED", "disk full", Now.Add(time.Second)))
	asg, err := rs.ReleaseAssignmentByAgent(ctx, "a1")
	must(t, err)
	want := &store.ReleaseAssignment{AgentID: "a1", ProjectID: "p", Version: "v1.1.0", RolloutID: "rr1", Status: "INSTALL_FAILED", Error: "disk full", UpdatedAt: Now.Add(time.Second)}
	if diff := cmp.Diff(want, asg); diff != "" {
		t.Errorf("release assignment (-want +got):\n%s", diff)
	}
	if list, err := rs.ListReleaseAssignments(ctx, "p"); err != nil || len(list) != 1 {
		t.Errorf("ListReleaseAssignments: %v, %v", list, err)
	}
	must(t, rs.ApplyReleaseRolloutChange(ctx, &store.ReleaseRolloutChange{Unassign: []string{"a1"}}))
	_, err = rs.ReleaseAssignmentByAgent(ctx, "a1")
	wantErr(t, "after unassign", err, store.ErrNotFound)
}
