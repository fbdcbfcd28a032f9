package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
)

// Updates of many agents at once are committed in shared transactions and
// every one lands at its own version; a batch that holds a stale write
// fails only that write.
func TestGroupCommitOfAgentUpdates(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const agents, rounds = 200, 5
	for i := range agents {
		if err := s.UpsertAgent(ctx, storetest.Agent(fmt.Sprint("a", i), "p1")); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, agents*rounds)
	for i := range agents {
		wg.Go(func() {
			id := fmt.Sprint("a", i)
			for r := range rounds {
				a, err := s.AgentByID(ctx, id)
				if err != nil {
					errs <- err
					return
				}
				a.Hostname = fmt.Sprint("round-", r)
				if err := s.UpsertAgent(ctx, a); err != nil {
					errs <- err
					return
				}
				// A stale copy written alongside must conflict, alone.
				stale := *a
				stale.RowVersion--
				if err := s.UpsertAgent(ctx, &stale); err == nil {
					errs <- fmt.Errorf("stale write of %s accepted", id)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.RowVersion != rounds+1 || a.Hostname != fmt.Sprint("round-", rounds-1) {
			t.Errorf("agent %s at version %d with %q: want %d and the last round", a.ID, a.RowVersion, a.Hostname, rounds+1)
		}
	}
	// Updates after Close fail clearly instead of hanging.
	s.Close()
	a := storetest.Agent("a0", "p1")
	a.RowVersion = 9
	if err := s.UpsertAgent(ctx, a); err == nil {
		t.Error("update after Close succeeded")
	}
}
