package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Topics that fleet replicas publish on. Each carries ids.
const (
	// TopicRevoke carries token ids (jti) just revoked.
	TopicRevoke = "revoke"
	// TopicRotate carries agent ids whose credential rotation was asked
	// for on a replica they are not connected to.
	TopicRotate = "rotate"
	// TopicAssign carries agent ids whose config or release assignment
	// changed.
	TopicAssign = "assign"
	// TopicChanged carries project ids whose agents or rollouts changed
	// (the console's live events refresh at once).
	TopicChanged = "changed"
)

// Limits of a notification (PostgreSQL refuses NOTIFY payloads of 8000
// bytes or more; MaxPayload keeps a margin).
const (
	MaxPayload  = 7900
	MaxIDLen    = 128
	maxTopicLen = 32
	maxOrigin   = 64
	// MaxPending bounds the ids one subscription holds for a slow reader;
	// past it the ids are dropped and the reader gets Resync instead.
	MaxPending = 10000
)

// ErrBadNotification: a notification payload, topic or id is malformed.
var ErrBadNotification = errors.New("malformed notification")

// Bus carries small notifications (lists of ids) between the fleet
// processes that share one store: between the replicas of a PostgreSQL
// fleet, and within the process on SQLite. Notifications are hints that
// make a change visible at once; the state itself is in the store, and
// readers keep polling it (more slowly while Live) as the safety net.
type Bus interface {
	// Publish sends ids on topic to the subscribers of every process
	// sharing the store, this one included. A long list is split into
	// several messages. Ids must match [A-Za-z0-9._:-]{1,128}; an
	// invalid one fails the whole call with ErrBadNotification.
	Publish(ctx context.Context, topic string, ids ...string) error
	// Subscribe returns the events of topic until ctx ends, when the
	// channel is closed. Ids that arrive while the reader is busy are
	// merged into the next event; past MaxPending they are dropped and
	// the event has Resync set.
	Subscribe(ctx context.Context, topic string) <-chan Event
	// Live reports whether notifications from other processes arrive now.
	// While it is false (the database is unreachable) readers poll at
	// their fast rate.
	Live() bool
}

// Event is what a subscriber receives.
type Event struct {
	// IDs published on the topic since the previous event, each once.
	IDs []string
	// Resync: notifications may have been lost (the listener reconnected
	// or the reader fell behind); re-read the state from the store.
	Resync bool
}

// Notification is one message on the wire.
type Notification struct {
	Topic  string
	Origin string // the publishing process (receivers skip their own)
	IDs    []string
}

// Wire format: "1;" topic ";" origin ";" id ("," id)*, at most MaxPayload
// bytes.
const wireVersion = "1"

func validToken(s string, max int, extra string) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte(extra, c) >= 0:
		default:
			return false
		}
	}
	return true
}

func validTopic(s string) bool {
	if !validToken(s, maxTopicLen, "_") {
		return false
	}
	return s[0] >= 'a' && s[0] <= 'z' && strings.ToLower(s) == s
}

// ValidID reports whether s may travel as an id on the bus.
func ValidID(s string) bool { return validToken(s, MaxIDLen, "._:-") }

func validOrigin(s string) bool { return validToken(s, maxOrigin, "._-") }

// EncodeNotification returns the payloads that carry n: the ids split so
// that each payload stays within MaxPayload.
func EncodeNotification(n Notification) ([]string, error) {
	if !validTopic(n.Topic) {
		return nil, fmt.Errorf("topic %q: %w", n.Topic, ErrBadNotification)
	}
	if !validOrigin(n.Origin) {
		return nil, fmt.Errorf("origin %q: %w", n.Origin, ErrBadNotification)
	}
	if len(n.IDs) == 0 {
		return nil, fmt.Errorf("no ids: %w", ErrBadNotification)
	}
	head := wireVersion + ";" + n.Topic + ";" + n.Origin + ";"
	var out []string
	var b strings.Builder
	for _, id := range n.IDs {
		if !ValidID(id) {
			return nil, fmt.Errorf("id %q: %w", id, ErrBadNotification)
		}
		if b.Len() > 0 && b.Len()+1+len(id) > MaxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(head)
		} else {
			b.WriteByte(',')
		}
		b.WriteString(id)
	}
	return append(out, b.String()), nil
}

// DecodeNotification parses one payload. It never panics; anything but a
// payload EncodeNotification could have produced is ErrBadNotification.
func DecodeNotification(p string) (Notification, error) {
	if len(p) > MaxPayload {
		return Notification{}, fmt.Errorf("payload of %d bytes: %w", len(p), ErrBadNotification)
	}
	parts := strings.SplitN(p, ";", 4)
	if len(parts) != 4 || parts[0] != wireVersion {
		return Notification{}, fmt.Errorf("payload %.40q: %w", p, ErrBadNotification)
	}
	n := Notification{Topic: parts[1], Origin: parts[2]}
	if !validTopic(n.Topic) || !validOrigin(n.Origin) {
		return Notification{}, fmt.Errorf("payload %.40q: topic or origin: %w", p, ErrBadNotification)
	}
	n.IDs = strings.Split(parts[3], ",")
	for _, id := range n.IDs {
		if !ValidID(id) {
			return Notification{}, fmt.Errorf("payload %.40q: id %.40q: %w", p, id, ErrBadNotification)
		}
	}
	return n, nil
}

// Hub fans notifications out to the subscribers of one process. Bus
// implementations embed it; LocalBus is a Hub alone.
type Hub struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

type subscription struct {
	wake chan struct{} // cap 1: something is pending
	mu   sync.Mutex
	ids  []string
	set  map[string]struct{}
	lost bool
}

func (s *subscription) add(ids []string) {
	s.mu.Lock()
	for _, id := range ids {
		if _, ok := s.set[id]; ok {
			continue
		}
		if len(s.ids) >= MaxPending {
			s.lost = true
			break
		}
		s.set[id] = struct{}{}
		s.ids = append(s.ids, id)
	}
	s.mu.Unlock()
	s.signal()
}

func (s *subscription) resync() {
	s.mu.Lock()
	s.lost = true
	s.mu.Unlock()
	s.signal()
}

func (s *subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscription) take() (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 && !s.lost {
		return Event{}, false
	}
	ev := Event{IDs: s.ids, Resync: s.lost}
	s.ids, s.set, s.lost = nil, map[string]struct{}{}, false
	return ev, true
}

// Subscribe implements Bus.Subscribe.
func (h *Hub) Subscribe(ctx context.Context, topic string) <-chan Event {
	sub := &subscription{wake: make(chan struct{}, 1), set: map[string]struct{}{}}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[string]map[*subscription]struct{}{}
	}
	if h.subs[topic] == nil {
		h.subs[topic] = map[*subscription]struct{}{}
	}
	h.subs[topic][sub] = struct{}{}
	h.mu.Unlock()
	out := make(chan Event)
	go func() {
		defer close(out)
		defer func() {
			h.mu.Lock()
			delete(h.subs[topic], sub)
			h.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.wake:
			}
			ev, ok := sub.take()
			if !ok {
				continue
			}
			select {
			case <-ctx.Done():
				return
			case out <- ev:
			}
		}
	}()
	return out
}

func (h *Hub) each(topic string, f func(*subscription)) {
	h.mu.Lock()
	list := make([]*subscription, 0, len(h.subs[topic]))
	for s := range h.subs[topic] {
		list = append(list, s)
	}
	h.mu.Unlock()
	for _, s := range list {
		f(s)
	}
}

// Deliver hands ids to this process's subscribers of topic.
func (h *Hub) Deliver(topic string, ids []string) {
	if len(ids) == 0 {
		return
	}
	h.each(topic, func(s *subscription) { s.add(ids) })
}

// ResyncAll tells every subscriber of every topic to re-read the store.
func (h *Hub) ResyncAll() {
	h.mu.Lock()
	var list []*subscription
	for _, subs := range h.subs {
		for s := range subs {
			list = append(list, s)
		}
	}
	h.mu.Unlock()
	for _, s := range list {
		s.resync()
	}
}

// CheckPublish validates what Publish is given, the same way on every
// backend.
func CheckPublish(topic string, ids []string) error {
	if !validTopic(topic) {
		return fmt.Errorf("topic %q: %w", topic, ErrBadNotification)
	}
	for _, id := range ids {
		if !ValidID(id) {
			return fmt.Errorf("id %q: %w", id, ErrBadNotification)
		}
	}
	return nil
}

// LocalBus is the Bus of a fleet that is one process (SQLite):
// notifications go to this process's subscribers alone.
type LocalBus struct{ Hub }

var _ Bus = (*LocalBus)(nil)

// Publish implements Bus.Publish.
func (b *LocalBus) Publish(_ context.Context, topic string, ids ...string) error {
	if err := CheckPublish(topic, ids); err != nil {
		return err
	}
	b.Deliver(topic, ids)
	return nil
}

// Live implements Bus.Live: a process always hears itself.
func (b *LocalBus) Live() bool { return true }
