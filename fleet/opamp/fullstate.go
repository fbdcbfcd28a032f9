package opamp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"
)

// Asking reconnected agents for their full state, at a pace that leaves
// the handshakes of a reconnect storm the CPU.
//
// An agent back on a new WebSocket says nothing new (an empty message,
// its sequence going on), and a fleet that restarted must ask for its
// full state: it may have missed a report in flight when it died. The
// answer is the agent's whole state (description, effective config,
// statuses) to build, clone and send, and the fleet's to decode and judge
// against the record: in a storm of 19,000 agents after a SIGKILL about
// half of the CPU the fleet and the agents spend. Asked in the answer to
// the first message, that work competed with the handshakes of the
// agents still waiting in the kernel's listen queue, whose overflow costs
// each a TCP retransmission (one second, then two). The fleet now takes
// the connections first: the first message is not answered, and the
// agent is queued; the queue is asked once no handshake began for
// fullStateQuiet, or when its oldest waited fullStateMaxWait (a fleet
// that never stops taking handshakes still asks), with at most
// fullStateInFlight full states awaited at a time. Until its full state
// comes the agent is connected here and gets pushes; its record is
// what the fleet stored before, which is what the full state checks.
var (
	// fullStateQuiet is how long no handshake must have begun before the
	// queued agents are asked. (Variables for the tests; a server takes
	// them when it is created.)
	fullStateQuiet = 50 * time.Millisecond
	// fullStateMaxWait is the longest an agent waits in the queue.
	fullStateMaxWait = 5 * time.Second
)

// fullStateInFlight bounds the agents asked whose full state has not
// come yet: the asks follow the pace at which the full states are taken,
// and a wave of handshakes that comes meanwhile (the agents whose
// connection attempts the kernel's full listen queue dropped come back a
// second later) competes with at most these.
// (A variable for the tests.)
var fullStateInFlight = 256

// fullStateQueue holds the connections whose full state is yet to be
// asked for, oldest first.
type fullStateQueue struct {
	quiet, maxWait time.Duration
	inFlight       int
	// outstanding counts the agents asked whose full state has not come
	// (conn.awaitingFull); taken signals a decrement.
	outstanding atomic.Int64
	taken       chan struct{}

	mu     sync.Mutex
	queued []queuedConn
	wake   chan struct{}
}

// queuedConn is a connection waiting for its ask, and since when.
type queuedConn struct {
	c     *conn
	since time.Time
}

// init readies the queue with the package's pace.
func (q *fullStateQueue) init() {
	q.quiet, q.maxWait, q.inFlight = fullStateQuiet, fullStateMaxWait, fullStateInFlight
	q.wake, q.taken = make(chan struct{}, 1), make(chan struct{}, 1)
}

// push queues c.
func (q *fullStateQueue) push(c *conn, now time.Time) {
	q.mu.Lock()
	q.queued = append(q.queued, queuedConn{c, now})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop takes up to n connections off the queue.
func (q *fullStateQueue) pop(n int) []*conn {
	q.mu.Lock()
	defer q.mu.Unlock()
	n = min(n, len(q.queued))
	out := make([]*conn, n)
	for i, e := range q.queued[:n] {
		out[i] = e.c
	}
	clear(q.queued[:n])
	q.queued = q.queued[n:]
	if len(q.queued) == 0 {
		q.queued = nil // let the storm's array go
	}
	return out
}

// took notes that an asked agent's full state came (or its connection
// closed).
func (q *fullStateQueue) took() {
	q.outstanding.Add(-1)
	select {
	case q.taken <- struct{}{}:
	default:
	}
}

// oldest reports when the oldest queued connection was queued; false if
// none is.
func (q *fullStateQueue) oldest() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queued) == 0 {
		return time.Time{}, false
	}
	return q.queued[0].since, true
}

// askFullStates asks the queued agents for their full state (see the top
// of this file) until done is closed.
func (s *Server) askFullStates(done <-chan struct{}) {
	ask := &protobufs.ServerToAgent{Flags: uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)}
	for {
		select {
		case <-done:
			return
		case <-s.fullStates.wake:
		}
		for {
			since, ok := s.fullStates.oldest()
			if !ok {
				break
			}
			// Wait for a pause in the handshakes, or for the oldest to
			// have waited long enough.
			now := time.Now()
			q := &s.fullStates
			// (The agent's own queuing counts too: its answer goes out
			// first.)
			quietAt := time.Unix(0, max(s.lastHandshake.Load(), since.UnixNano())).Add(q.quiet)
			if now.Before(quietAt) && now.Sub(since) < q.maxWait {
				wait := min(quietAt.Sub(now), since.Add(q.maxWait).Sub(now))
				select {
				case <-done:
					return
				case <-time.After(wait):
				}
				continue
			}
			room := q.inFlight - int(q.outstanding.Load())
			if room <= 0 {
				select {
				case <-done:
					return
				case <-q.taken:
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			for _, c := range q.pop(room) {
				s.askFullState(c, ask)
			}
		}
	}
}

// askFullState sends the ask to c, if it is still its agent's connection.
func (s *Server) askFullState(c *conn, ask *protobufs.ServerToAgent) {
	s.mu.Lock()
	live := s.conns[c.agentID] == c
	s.mu.Unlock()
	if !live {
		return // gone, or replaced by a connection that asks on its own
	}
	msg := &protobufs.ServerToAgent{Flags: ask.Flags}
	ctx, cancel := context.WithTimeout(context.Background(), s.o.WriteTimeout)
	defer cancel()
	// Counted before the send: the full state may come before it returns.
	s.fullStates.outstanding.Add(1)
	c.awaitingFull.Store(true)
	if err := c.send(ctx, msg); err != nil {
		if c.awaitingFull.CompareAndSwap(true, false) {
			s.fullStates.took()
		}
		s.log.Debug("ask for full state", zap.String("agent", c.agentID), zap.Error(err))
		return
	}
	s.m.fullStateAsks.WithLabelValues("deferred").Inc()
}
