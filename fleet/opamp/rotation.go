package opamp

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// rotationQueue holds agents waiting for a credential offer, deduplicated
// and served in order at Options.RotationRate. With a bus (UseBus), the
// rotations of agents connected to other replicas wait in remote until
// Run publishes them.
type rotationQueue struct {
	mu     sync.Mutex
	order  []string
	in     map[string]bool
	bus    store.Bus
	remote []string
	inRem  map[string]bool
}

// pushRemote queues a rotation for the replica that holds the agent.
func (q *rotationQueue) pushRemote(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.inRem == nil {
		q.inRem = map[string]bool{}
	}
	if q.inRem[id] || len(q.remote) >= store.MaxPending {
		return // beyond the bound: the agent is pending in the store and gets it on reconnect
	}
	q.inRem[id] = true
	q.remote = append(q.remote, id)
}

func (q *rotationQueue) takeRemote() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.remote
	q.remote, q.inRem = nil, nil
	return out
}

func (q *rotationQueue) push(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.in == nil {
		q.in = map[string]bool{}
	}
	if q.in[id] {
		return
	}
	q.in[id] = true
	q.order = append(q.order, id)
}

func (q *rotationQueue) pop(n int) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n > len(q.order) {
		n = len(q.order)
	}
	out := append([]string(nil), q.order[:n]...)
	q.order = q.order[n:]
	for _, id := range out {
		delete(q.in, id)
	}
	return out
}

// Queued reports how many rotations wait for their turn.
func (s *Server) Queued() int {
	s.rq.mu.Lock()
	defer s.rq.mu.Unlock()
	return len(s.rq.order)
}

// RotateCredential asks for a new credential for one agent. The agent is
// marked pending at once; the offer goes out in turn (paced), on its live
// connection here, on another replica's (through the bus, see UseBus),
// or, if it is offline, when it next connects.
func (s *Server) RotateCredential(ctx context.Context, agentID string) error {
	if _, err := s.updateAgent(ctx, agentID, func(a *store.Agent) error {
		a.RotationStatus, a.RotationError = "pending", ""
		return nil
	}); err != nil {
		return err
	}
	if s.rq.bus != nil && !s.isLive(agentID) {
		s.rq.pushRemote(agentID)
		return nil
	}
	s.rq.push(agentID)
	return nil
}

// Run paces queued rotations and rotates credentials that reached
// Options.RotateAt of their life, until ctx ends. With a bus it also
// publishes rotations meant for other replicas' agents and queues those
// that other replicas publish for agents connected here.
func (s *Server) Run(ctx context.Context) error {
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	budget := 0.0
	lastScan := time.Time{}
	var rotations <-chan store.Event
	if s.rq.bus != nil {
		rotations = s.rq.bus.Subscribe(ctx, store.TopicRotate)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-rotations:
			if !ok {
				rotations = nil
				continue
			}
			s.takeRotations(ctx, ev)
		case now := <-t.C:
			s.publishRotations(ctx)
			// Scanning every connection is only needed when one may be
			// due: a new connection, or the earliest due time passed.
			if now.Sub(lastScan) >= time.Second && s.o.Now().UnixNano() >= s.scanAt.Load() {
				lastScan = now
				s.scanExpiring()
			}
			budget += s.o.RotationRate * tick.Seconds()
			if budget > s.o.RotationRate {
				budget = s.o.RotationRate
			}
			n := int(budget)
			if n == 0 {
				continue
			}
			ids := s.rq.pop(n)
			budget -= float64(len(ids))
			for _, id := range ids {
				s.offerNow(ctx, id)
			}
		}
	}
}

// offerNow sends a credential offer to a connected agent.
func (s *Server) offerNow(ctx context.Context, agentID string) {
	s.mu.Lock()
	c := s.conns[agentID]
	s.mu.Unlock()
	if c == nil {
		return // offered when it connects (RotationStatus pending)
	}
	if !c.offered.CompareAndSwap(false, true) {
		return // an offer is already out on this connection
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	offer, err := s.offerCredential(ctx, agentID, "rotate", nil)
	if err != nil {
		c.offered.Store(false)
		s.log.Warn("issue rotated credential", zap.String("agent", agentID), zap.Error(err))
		return
	}
	if err := s.Send(ctx, agentID, &protobufs.ServerToAgent{ConnectionSettings: offer}); err != nil {
		s.log.Info("send credential offer", zap.String("agent", agentID), zap.Error(err))
	}
}

// scanExpiring queues agents whose credential is past RotateAt of its life.
func (s *Server) scanExpiring() {
	now := s.o.Now()
	next := int64(math.MaxInt64)
	soon := func(t time.Time) {
		if n := t.UnixNano(); n < next {
			next = n
		}
	}
	s.mu.Lock()
	var due []string
	var expired []*conn
	for id, c := range s.conns {
		cl := c.claims
		if cl.ExpiresAt != nil && now.After(cl.ExpiresAt.Time) {
			// A credential's life ends its connection too.
			expired = append(expired, c)
			continue
		}
		if cl.ExpiresAt != nil {
			soon(cl.ExpiresAt.Time)
		}
		if c.offered.Load() || cl.ExpiresAt == nil || cl.IssuedAt == nil || cl.Kind() != "agent" {
			continue
		}
		life := cl.ExpiresAt.Time.Sub(cl.IssuedAt.Time)
		at := cl.IssuedAt.Time.Add(time.Duration(float64(life) * s.o.RotateAt))
		if now.After(at) {
			due = append(due, id)
		} else {
			soon(at)
		}
	}
	// A connection registered from here on resets this (register).
	s.scanAt.Store(next)
	s.mu.Unlock()
	for _, id := range due {
		s.rq.push(id)
	}
	for _, c := range expired {
		s.log.Info("closing connection: credential expired", zap.String("agent", c.agentID))
		if c.c != nil {
			_ = c.c.Disconnect()
		}
	}
}

// CloseKey disconnects every connection whose token was signed with kid
// (after that key was retired).
func (s *Server) CloseKey(kid string) int {
	s.mu.Lock()
	var list []*conn
	for _, cs := range s.byJTI {
		for _, c := range cs {
			if c.claims.KeyID == kid {
				list = append(list, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range list {
		if c.c != nil {
			_ = c.c.Disconnect()
		}
	}
	return len(list)
}
