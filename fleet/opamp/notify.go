package opamp

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// UseBus makes on-demand rotations cross replicas: RotateCredential for
// an agent that is not connected here publishes its id on
// store.TopicRotate, and the replica that holds the agent queues the
// offer at its own paced rate. Call it before Run.
func (s *Server) UseBus(b store.Bus) { s.rq.bus = b }

// publishRotations sends the rotations queued for other replicas' agents.
// Those that cannot be sent now are retried on a later tick (they are
// pending in the store either way: an agent gets the offer when it next
// connects).
func (s *Server) publishRotations(ctx context.Context) {
	ids := s.rq.takeRemote()
	if len(ids) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.rq.bus.Publish(pctx, store.TopicRotate, ids...); err != nil {
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("publish rotations to other replicas; retrying", zap.Int("agents", len(ids)), zap.Error(err))
		for _, id := range ids {
			s.rq.pushRemote(id)
		}
	}
}

// takeRotations queues the offers for the agents of a rotate event that
// are connected here (others belong to other replicas). After a Resync
// the store says which connected agents wait for a rotation.
func (s *Server) takeRotations(ctx context.Context, ev store.Event) {
	for _, id := range ev.IDs {
		if s.isLive(id) {
			s.rq.push(id)
		}
	}
	if !ev.Resync {
		return
	}
	live := map[string]bool{}
	for _, id := range s.Connected() {
		live[id] = true
	}
	if len(live) == 0 {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	agents, err := s.o.Store.ListAgents(lctx, store.AgentFilter{Match: func(a *store.Agent) bool {
		return a.RotationStatus == "pending" && live[a.ID]
	}})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("resync pending rotations", zap.Error(err))
		}
		return
	}
	for _, a := range agents {
		s.rq.push(a.ID)
	}
	if len(agents) > 0 {
		s.log.Info("resync: queued pending rotations of agents connected here", zap.Int("agents", len(agents)))
	}
}
