package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/postgres"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
	"github.com/fleetprof/fleetprof/test/pg"
)

// runBus starts a bus of a store until the test ends.
func runBus(t *testing.T, s *postgres.Store, o postgres.BusOptions) *postgres.Bus {
	t.Helper()
	b, err := s.NewBus(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

// TestBus: two replicas' buses on one database deliver to each other.
func TestBus(t *testing.T) {
	storetest.RunBus(t, func(t *testing.T) (store.Bus, store.Bus) {
		dsn := pg.NewDatabase(t)
		return runBus(t, open(t, dsn), postgres.BusOptions{}), runBus(t, open(t, dsn), postgres.BusOptions{})
	})
}

func waitLive(t *testing.T, b store.Bus, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !b.Live() {
		if time.Now().After(deadline) {
			t.Fatalf("bus not live after %s", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// next returns the next event or fails after 10s.
func next(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return store.Event{}
}

// TestBusMalformed: a NOTIFY on the fleet channel that is not ours is
// counted and dropped; the listener keeps working.
func TestBusMalformed(t *testing.T) {
	dsn := pg.NewDatabase(t)
	s := open(t, dsn)
	reg := prometheus.NewRegistry()
	b := runBus(t, s, postgres.BusOptions{Registerer: reg})
	waitLive(t, b, 10*time.Second)
	ch := b.Subscribe(t.Context(), store.TopicRevoke)
	for _, p := range []string{"", "junk", "1;revoke;x;a,,b", "1;revoke;x;é"} {
		if _, err := s.DB().ExecContext(t.Context(), `SELECT pg_notify($1, $2)`, postgres.BusChannel, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.DB().ExecContext(t.Context(), `SELECT pg_notify($1, $2)`, postgres.BusChannel, "1;revoke;other;good"); err != nil {
		t.Fatal(err)
	}
	var ev store.Event
	for len(ev.IDs) == 0 {
		ev = next(t, ch)
	}
	if len(ev.IDs) != 1 || ev.IDs[0] != "good" {
		t.Errorf("got %+v, want the one good id", ev)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var dropped float64
	for _, mf := range mfs {
		if mf.GetName() == "fleetprof_bus_dropped_total" {
			dropped = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if dropped != 4 {
		t.Errorf("dropped %v malformed notifications, want 4", dropped)
	}
}

// TestBusRestart: when PostgreSQL restarts, the listener reconnects by
// itself, subscribers get a Resync (what was notified meanwhile is
// lost), and later notifications arrive again.
func TestBusRestart(t *testing.T) {
	ctx := t.Context()
	srv := pg.Shared(t)
	dsn := pg.NewDatabase(t)
	a := runBus(t, open(t, dsn), postgres.BusOptions{MaxBackoff: 500 * time.Millisecond})
	sb := open(t, dsn)
	b := runBus(t, sb, postgres.BusOptions{MaxBackoff: 500 * time.Millisecond})
	waitLive(t, a, 10*time.Second)
	waitLive(t, b, 10*time.Second)
	ch := b.Subscribe(ctx, store.TopicRotate)

	if err := srv.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = srv.Restart(context.Background())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for b.Live() {
		if time.Now().After(deadline) {
			t.Fatal("bus still live 10s after the server stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Publish(ctx, store.TopicRotate, "lost"); err == nil {
		t.Error("publish with the server down succeeded")
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	up := time.Now()
	waitLive(t, b, 10*time.Second)
	waitLive(t, a, 10*time.Second)
	t.Logf("listener live again %s after the restart", time.Since(up).Round(time.Millisecond))
	sawResync := false
	for !sawResync {
		ev := next(t, ch)
		sawResync = ev.Resync
	}
	// The pool may hold a dead connection or two: retry the publish.
	var err error
	for range 5 {
		if err = a.Publish(ctx, store.TopicRotate, "agent-1"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev := next(t, ch)
		if len(ev.IDs) > 0 {
			if ev.IDs[0] != "agent-1" {
				t.Errorf("after restart got %v, want agent-1", ev.IDs)
			}
			break
		}
	}
}

// TestBusQuietCheck: a listener that hears nothing for CheckEvery pings
// the server and keeps its connection (no reconnect, no resync), and
// still receives afterwards.
func TestBusQuietCheck(t *testing.T) {
	dsn := pg.NewDatabase(t)
	reg := prometheus.NewRegistry()
	b := runBus(t, open(t, dsn), postgres.BusOptions{CheckEvery: 100 * time.Millisecond, Registerer: reg})
	pub := runBus(t, open(t, dsn), postgres.BusOptions{})
	waitLive(t, b, 10*time.Second)
	ch := b.Subscribe(t.Context(), store.TopicAssign)
	time.Sleep(time.Second) // about ten quiet checks
	if err := pub.Publish(t.Context(), store.TopicAssign, "a1"); err != nil {
		t.Fatal(err)
	}
	for {
		ev := next(t, ch)
		if ev.Resync {
			t.Error("resync after quiet checks: the listener reconnected")
		}
		if len(ev.IDs) > 0 {
			break
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "fleetprof_bus_connects_total" {
			if n := mf.GetMetric()[0].GetCounter().GetValue(); n != 1 {
				t.Errorf("listener connected %v times in a quiet second, want 1", n)
			}
		}
	}
}
