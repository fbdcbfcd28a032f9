package opamp

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// slowWrites makes every agent write take 300 ms and counts them.
type slowWrites struct {
	store.Store
	started, finished atomic.Int32
}

func (s *slowWrites) UpsertAgent(ctx context.Context, a *store.Agent) error {
	s.started.Add(1)
	defer s.finished.Add(1)
	time.Sleep(300 * time.Millisecond)
	return s.Store.UpsertAgent(ctx, a)
}

// Shutdown returns only after the handlers' store work in flight is done,
// so that the caller may close the store (the tests' fixtures then
// removed a directory SQLite was still writing).
func TestShutdownWaitsForStoreWork(t *testing.T) {
	f := newFixture(t, Options{})
	slow := &slowWrites{Store: f.st}
	srv, err := New(Options{Store: slow, Auth: f.auth})
	if err != nil {
		t.Fatal(err)
	}
	c := dialTo(t, serve(t, srv).URL, f.boot)
	sendMsg(t, c, enrollMsg("draining"))
	waitFor(t, "an agent write in flight", func() bool { return slow.started.Load() > 0 })
	srv.Shutdown()
	if started, finished := slow.started.Load(), slow.finished.Load(); finished != started {
		t.Fatalf("Shutdown returned with %d of %d agent writes unfinished", started-finished, started)
	}
}
