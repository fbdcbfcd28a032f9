package server

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
)

// ids reads one event of ch (or fails after 2s).
func ids(t *testing.T, ch <-chan store.Event) []string {
	t.Helper()
	select {
	case ev := <-ch:
		slices.Sort(ev.IDs)
		return ev.IDs
	case <-time.After(2 * time.Second):
		t.Fatal("no event within 2s")
	}
	return nil
}

// TestPublishingStore: the rollout controller's writes publish the agents
// whose assignment changed and the project; a failed write publishes
// nothing; the release manager still finds store.Releases.
func TestPublishingStore(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &replica{st: st, bus: &store.LocalBus{}, log: zap.NewNop()}
	ws := r.rolloutStore()
	if _, ok := ws.(store.Releases); !ok {
		t.Fatal("the publishing store hides store.Releases from the release manager")
	}
	assigned := r.bus.Subscribe(ctx, store.TopicAssign)
	changed := r.bus.Subscribe(ctx, store.TopicChanged)
	go r.changes.run(ctx, r.bus, 20*time.Millisecond, r.log)

	if err := st.CreateProject(ctx, storetest.Project("p")); err != nil {
		t.Fatal(err)
	}
	cv := &store.ConfigVersion{ID: "c1", ProjectID: "p", Hash: "aa", YAML: "x", CreatedAt: storetest.Now}
	if err := ws.CreateConfigVersion(ctx, cv); err != nil {
		t.Fatal(err)
	}
	if err := ws.SetAssignments(ctx, []*store.Assignment{{AgentID: "a1", ProjectID: "p", ConfigID: "c1", ConfigHash: "aa", UpdatedAt: storetest.Now}}); err != nil {
		t.Fatal(err)
	}
	if got := ids(t, assigned); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("SetAssignments published %v, want [a1]", got)
	}

	ro := storetest.Rollout("r1", "p", cv)
	if err := ws.CreateRollout(ctx, ro, nil); err != nil {
		t.Fatal(err)
	}
	next := *ro
	next.Status, next.Stage = "running", 0
	ch := &store.RolloutChange{
		Rollout:  &next,
		Assign:   []*store.Assignment{{AgentID: "a2", ProjectID: "p", ConfigID: "c1", ConfigHash: "aa", RolloutID: "r1", UpdatedAt: storetest.Now}},
		Unassign: []string{"a1"},
	}
	if err := ws.ApplyRolloutChange(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if got := ids(t, assigned); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("ApplyRolloutChange published %v, want [a1 a2]", got)
	}
	if got := ids(t, changed); !slices.Equal(got, []string{"p"}) {
		t.Errorf("project changes %v, want [p]", got)
	}

	// A stale write fails and publishes nothing.
	stale := *ro
	if err := ws.ApplyRolloutChange(ctx, &store.RolloutChange{Rollout: &stale, Unassign: []string{"a9"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale change: %v, want ErrConflict", err)
	}
	select {
	case ev := <-assigned:
		t.Errorf("a failed write published %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}
