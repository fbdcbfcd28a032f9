package server

import (
	"context"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// publishingStore is the store the rollout controller writes through:
// after a write that changes assignments it publishes the agents on
// store.TopicAssign, so that the replicas holding them push at once
// instead of at their next poll of the assignments.
type publishingStore struct {
	fleetStore
	bus     store.Bus
	changed func(projectID string) // the console's live events
	log     *zap.Logger
}

func (s *publishingStore) publish(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	valid := ids[:0:0]
	for _, id := range ids {
		if store.ValidID(id) {
			valid = append(valid, id)
		}
	}
	// The write is done: a failed notification only delays the push
	// until the replicas' next poll.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.bus.Publish(pctx, store.TopicAssign, valid...); err != nil {
		s.log.Warn("publish assignment changes", zap.Int("agents", len(valid)), zap.Error(err))
	}
}

// SetAssignments implements store.Configs and publishes the agents.
func (s *publishingStore) SetAssignments(ctx context.Context, as []*store.Assignment) error {
	if err := s.fleetStore.SetAssignments(ctx, as); err != nil {
		return err
	}
	ids := make([]string, 0, len(as))
	for _, a := range as {
		ids = append(ids, a.AgentID)
	}
	s.publish(ctx, ids)
	return nil
}

// ApplyRolloutChange implements store.Rollouts and publishes the agents
// whose assignment it set or removed.
func (s *publishingStore) ApplyRolloutChange(ctx context.Context, ch *store.RolloutChange) error {
	if err := s.fleetStore.ApplyRolloutChange(ctx, ch); err != nil {
		return err
	}
	if ch.Rollout != nil {
		s.changed(ch.Rollout.ProjectID)
	}
	ids := append([]string(nil), ch.Unassign...)
	for _, a := range ch.Assign {
		ids = append(ids, a.AgentID)
	}
	s.publish(ctx, ids)
	return nil
}

// publishingReleases adds store.Releases to publishingStore for the
// release manager, publishing the agents of release assignment changes.
type publishingReleases struct {
	*publishingStore
	store.Releases
}

// ApplyReleaseRolloutChange implements store.Releases and publishes the
// agents whose release assignment it set or removed.
func (s *publishingReleases) ApplyReleaseRolloutChange(ctx context.Context, ch *store.ReleaseRolloutChange) error {
	if err := s.Releases.ApplyReleaseRolloutChange(ctx, ch); err != nil {
		return err
	}
	ids := append([]string(nil), ch.Unassign...)
	for _, a := range ch.Assign {
		ids = append(ids, a.AgentID)
	}
	s.publish(ctx, ids)
	return nil
}

// changes collects the projects whose agents or rollouts changed on this
// replica; run publishes them on store.TopicChanged every flush, so a
// reconnect storm of many agents is a few notifications.
type changes struct {
	mu  sync.Mutex
	set map[string]struct{}
}

func (c *changes) add(projectID string) {
	if !store.ValidID(projectID) {
		return
	}
	c.mu.Lock()
	if c.set == nil {
		c.set = map[string]struct{}{}
	}
	c.set[projectID] = struct{}{}
	c.mu.Unlock()
}

func (c *changes) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.set))
	for id := range c.set {
		out = append(out, id)
	}
	c.set = nil
	return out
}

// run publishes the collected projects every flush until ctx ends.
func (c *changes) run(ctx context.Context, bus store.Bus, flush time.Duration, log *zap.Logger) {
	t := time.NewTicker(flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := c.take()
		if len(ids) == 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := bus.Publish(pctx, store.TopicChanged, ids...); err != nil && ctx.Err() == nil {
			log.Debug("publish project changes", zap.Error(err)) // the console polls anyway
		}
		cancel()
	}
}

// fallbackHook is a test hook: FLEETPROF_TEST_REPLICA_FALLBACK=D sets how
// often a replica re-reads revocations and assignments from the store
// while its bus is live (default 10s), so a test can show that
// notifications, not the polls, carry a change.
func fallbackHook(log *zap.Logger) time.Duration {
	v := os.Getenv("FLEETPROF_TEST_REPLICA_FALLBACK")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		log.Warn("ignoring FLEETPROF_TEST_REPLICA_FALLBACK", zap.String("value", v))
		return 0
	}
	log.Warn("test hook: store re-read while the bus is live slowed", zap.Duration("every", d))
	return d
}
