package opamp

import (
	"context"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// TestRotationCrossesBus: a rotation asked of this replica for an agent
// connected elsewhere marks it pending and is published on the bus for
// the replica that holds it, and not queued here.
func TestRotationCrossesBus(t *testing.T) {
	f := newFixture(t, Options{})
	bus := &store.LocalBus{}
	f.srv.UseBus(bus)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	published := bus.Subscribe(ctx, store.TopicRotate)
	go func() { _ = f.srv.Run(ctx) }()

	agents := []string{"00000000000000000000000000000001", "00000000000000000000000000000002"}
	for _, id := range agents {
		if err := f.st.UpsertAgent(ctx, &store.Agent{ID: id, ProjectID: f.proj, Labels: map[string]string{}, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range append(agents, agents[0]) {
		if err := f.srv.RotateCredential(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	deadline := time.After(2 * time.Second)
	for len(got) < len(agents) {
		select {
		case ev := <-published:
			for _, id := range ev.IDs {
				got[id]++
			}
		case <-deadline:
			t.Fatalf("published %v within 2s, want %v", got, agents)
		}
	}
	for _, id := range agents {
		a, err := f.st.AgentByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if a.RotationStatus != "pending" {
			t.Errorf("agent %s rotation %q, want pending", id, a.RotationStatus)
		}
	}
	if n := f.srv.Queued(); n != 0 {
		t.Errorf("%d rotations queued here for agents connected elsewhere", n)
	}
}
