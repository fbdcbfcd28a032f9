package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// RunBus tests a store.Bus implementation. newBuses returns two buses of
// processes that share one store (the same bus twice for a backend that
// is one process); the suite publishes on the first and subscribes on
// both.
func RunBus(t *testing.T, newBuses func(t *testing.T) (pub, sub store.Bus)) {
	t.Run("Delivery", func(t *testing.T) {
		pub, sub := newBuses(t)
		waitLive(t, pub)
		waitLive(t, sub)
		local := pub.Subscribe(t.Context(), store.TopicRevoke)
		remote := sub.Subscribe(t.Context(), store.TopicRevoke)
		drain(remote) // a first Resync from connecting, if any
		drain(local)
		if err := pub.Publish(t.Context(), store.TopicRevoke, "jti-1", "jti-2"); err != nil {
			t.Fatal(err)
		}
		for name, ch := range map[string]<-chan store.Event{"publisher": local, "other process": remote} {
			got := collect(t, ch, 2)
			if !got["jti-1"] || !got["jti-2"] {
				t.Errorf("%s got %v, want jti-1 and jti-2", name, got)
			}
		}
	})
	t.Run("LongList", func(t *testing.T) {
		pub, sub := newBuses(t)
		waitLive(t, sub)
		ch := sub.Subscribe(t.Context(), store.TopicAssign)
		drain(ch)
		ids := make([]string, 3000)
		for i := range ids {
			ids[i] = fmt.Sprintf("0190f3c4-7a2b-7c3d-8e4f-%012d", i)
		}
		if err := pub.Publish(t.Context(), store.TopicAssign, ids...); err != nil {
			t.Fatal(err)
		}
		got := collect(t, ch, len(ids))
		for _, id := range ids {
			if !got[id] {
				t.Fatalf("id %s not delivered (%d of %d)", id, len(got), len(ids))
			}
		}
	})
	t.Run("Invalid", func(t *testing.T) {
		pub, _ := newBuses(t)
		for _, c := range []struct{ topic, id string }{{"Bad", "x"}, {store.TopicAssign, "a,b"}, {store.TopicAssign, ""}} {
			if err := pub.Publish(t.Context(), c.topic, c.id); !errors.Is(err, store.ErrBadNotification) {
				t.Errorf("publish %q on %q: got %v, want ErrBadNotification", c.id, c.topic, err)
			}
		}
	})
}

func waitLive(t *testing.T, b store.Bus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !b.Live() {
		if time.Now().After(deadline) {
			t.Fatal("bus not live after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func drain(ch <-chan store.Event) {
	for {
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

// collect reads events until n distinct ids arrived (or 10s passed).
func collect(t *testing.T, ch <-chan store.Event, n int) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("subscription closed")
			}
			for _, id := range ev.IDs {
				got[id] = true
			}
		case <-deadline:
			return got
		}
	}
	return got
}
