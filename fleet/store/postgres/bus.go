package postgres

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// BusChannel is the PostgreSQL channel the fleet notifies on; the topic
// travels inside the payload.
const BusChannel = "fleetprof"

// BusOptions configures a Bus.
type BusOptions struct {
	// Origin names this process in its notifications (so it skips its
	// own echo); "" means a random id.
	Origin string
	// MinBackoff and MaxBackoff bound the wait between reconnects of the
	// listener; 0 means 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// CheckEvery is how long the listener waits for a notification before
	// it pings the server to find a dead connection; 0 means 15s.
	CheckEvery time.Duration
	// Logger; nil means none.
	Logger *zap.Logger
	// Registerer receives the bus metrics; nil means none.
	Registerer prometheus.Registerer
}

// Bus is a store.Bus over LISTEN/NOTIFY. Publish notifies through the
// pool; Run holds one dedicated connection that LISTENs, reconnects with
// backoff when it is lost, and after every (re)connect tells all
// subscribers to resync, so nothing notified while it was away is lost
// for good.
type Bus struct {
	store.Hub
	st   *Store
	o    BusOptions
	log  *zap.Logger
	live atomic.Bool

	received, dropped, reconnects prometheus.Counter
}

var _ store.Bus = (*Bus)(nil)

// NewBus returns the store's notification bus; call Run to receive.
func (s *Store) NewBus(o BusOptions) (*Bus, error) {
	if o.Origin == "" {
		var b [8]byte
		_, _ = crand.Read(b[:])
		o.Origin = hex.EncodeToString(b[:])
	}
	if _, err := store.EncodeNotification(store.Notification{Topic: "check", Origin: o.Origin, IDs: []string{"x"}}); err != nil {
		return nil, fmt.Errorf("bus origin: %w", err)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(5*time.Second, o.MinBackoff)
	}
	if o.CheckEvery <= 0 {
		o.CheckEvery = 15 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	b := &Bus{st: s, o: o, log: o.Logger}
	b.received = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_bus_received_total", Help: "Notifications received from other replicas."})
	b.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_bus_dropped_total", Help: "Malformed notifications dropped."})
	b.reconnects = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_bus_connects_total", Help: "Connections of the notification listener."})
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleetprof_bus_live", Help: "1 while the notification listener is connected and listening."}, func() float64 {
		if b.Live() {
			return 1
		}
		return 0
	})
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{b.received, b.dropped, b.reconnects, live} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register bus metrics: %w", err)
			}
		}
	}
	return b, nil
}

// Origin is this process's name in its notifications.
func (b *Bus) Origin() string { return b.o.Origin }

// Live implements store.Bus: the listener is connected and listening.
func (b *Bus) Live() bool { return b.live.Load() }

// Publish implements store.Bus: local subscribers get the ids at once,
// other processes through NOTIFY (in payloads under 8000 bytes).
func (b *Bus) Publish(ctx context.Context, topic string, ids ...string) error {
	if err := store.CheckPublish(topic, ids); err != nil {
		return err
	}
	if len(ids) == 0 {
		return nil
	}
	b.Deliver(topic, ids)
	payloads, err := store.EncodeNotification(store.Notification{Topic: topic, Origin: b.o.Origin, IDs: ids})
	if err != nil {
		return err
	}
	for _, p := range payloads {
		if _, err := b.st.db.ExecContext(ctx, `SELECT pg_notify(?, ?)`, BusChannel, p); err != nil {
			return fmt.Errorf("notify %s: %w", topic, err)
		}
	}
	return nil
}

// Run listens until ctx ends, reconnecting after failures.
func (b *Bus) Run(ctx context.Context) error {
	backoff := b.o.MinBackoff
	failing := false
	for ctx.Err() == nil {
		err := b.listen(ctx, func() {
			backoff = b.o.MinBackoff
			if failing {
				b.log.Info("notification listener reconnected")
			}
			failing = false
		})
		b.live.Store(false)
		if ctx.Err() != nil {
			break
		}
		if !failing {
			b.log.Warn("notification listener lost; polling until it is back", zap.Error(err))
		} else {
			b.log.Debug("notification listener", zap.Error(err))
		}
		failing = true
		// Full jitter between half and all of the backoff.
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		backoff = min(2*backoff, b.o.MaxBackoff)
	}
	return nil
}

// listen holds one connection until it fails or ctx ends.
func (b *Bus) listen(ctx context.Context, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, b.st.cfg.Copy())
	if err != nil {
		return fmt.Errorf("connect listener: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{BusChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	b.reconnects.Inc()
	b.live.Store(true)
	connected()
	// Anything published while no listener was up is unknown: resync.
	b.ResyncAll()
	for {
		wctx, cancel := context.WithTimeout(ctx, b.o.CheckEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			b.handle(n)
			continue
		case ctx.Err() != nil:
			return nil
		case pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded):
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping listener: %w", err)
			}
			continue
		default:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}

func (b *Bus) handle(n *pgconn.Notification) {
	if n.Channel != BusChannel {
		return
	}
	msg, err := store.DecodeNotification(n.Payload)
	if err != nil {
		b.dropped.Inc()
		b.log.Warn("dropping notification", zap.Uint32("from_pid", n.PID), zap.Error(err))
		return
	}
	if msg.Origin == b.o.Origin {
		return // delivered locally when published
	}
	b.received.Inc()
	b.Deliver(msg.Topic, msg.IDs)
}
