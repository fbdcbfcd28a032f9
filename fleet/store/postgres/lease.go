package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

var errNoRows = sql.ErrNoRows

// LeaseOptions configures a Lease.
type LeaseOptions struct {
	// Name of the lease (one leader per name); required.
	Name string
	// Holder identifies this replica; required and unique per replica.
	Holder string
	// TTL is how long a lease lasts without renewal; 0 means 5s.
	TTL time.Duration
	// Renew is how often the holder renews (and others try to take it);
	// 0 means 1s.
	Renew time.Duration
	// Logger; nil means none.
	Logger *zap.Logger
}

// Lease is a leader lease kept in the leases table: the holder renews it
// every Renew; when it stops (crash, lost database), another replica
// takes it over once TTL has passed. Expiry uses the database clock.
type Lease struct {
	st  *Store
	o   LeaseOptions
	log *zap.Logger

	mu    sync.Mutex
	until time.Time // local deadline of the lease we hold (zero: not held)
}

// NewLease returns a lease; call Run to take part in the election.
func (s *Store) NewLease(o LeaseOptions) (*Lease, error) {
	if o.Name == "" || o.Holder == "" {
		return nil, errors.New("lease: Name and Holder are required")
	}
	if o.TTL <= 0 {
		o.TTL = 5 * time.Second
	}
	if o.Renew <= 0 {
		o.Renew = time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return &Lease{st: s, o: o, log: o.Logger}, nil
}

// Leader reports whether this replica holds the lease now. It turns
// false by itself when renewals fail for longer than the TTL, before
// another replica can take the lease (its local deadline starts before
// the renewal is sent).
func (l *Lease) Leader() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.until)
}

// Run tries to take or renew the lease every Renew until ctx ends, then
// releases it.
func (l *Lease) Run(ctx context.Context) error {
	t := time.NewTicker(l.o.Renew)
	defer t.Stop()
	for {
		l.tryOnce(ctx)
		select {
		case <-ctx.Done():
			l.release()
			return nil
		case <-t.C:
		}
	}
}

// TryAcquire takes or renews the lease once and reports whether this
// replica holds it.
func (l *Lease) TryAcquire(ctx context.Context) (bool, error) {
	// Count the TTL from before the request (less the renew period, for
	// slack between clocks), so the local view never outlives the row.
	start := time.Now()
	var holder string
	err := l.st.db.QueryRowContext(ctx, `INSERT INTO leases(name, holder, expires_at) VALUES (?, ?, now() + ? * interval '1 millisecond')
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE leases.holder = excluded.holder OR leases.expires_at < now()
		RETURNING holder`, l.o.Name, l.o.Holder, l.o.TTL.Milliseconds()).Scan(&holder)
	l.mu.Lock()
	was := time.Now().Before(l.until)
	switch {
	case err == nil:
		l.until = start.Add(l.o.TTL - l.o.Renew)
	case errors.Is(err, errNoRows):
		l.until = time.Time{} // another replica holds it
	default:
		// The database failed: keep the local deadline, which lapses by
		// itself before the row expires.
	}
	now := time.Now().Before(l.until)
	l.mu.Unlock()
	switch {
	case now && !was:
		l.log.Info("became leader", zap.String("lease", l.o.Name), zap.String("holder", l.o.Holder))
	case was && !now:
		l.log.Warn("lost leadership", zap.String("lease", l.o.Name), zap.String("holder", l.o.Holder))
	}
	if err != nil && !errors.Is(err, errNoRows) {
		return now, fmt.Errorf("renew lease %s: %w", l.o.Name, err)
	}
	return now, nil
}

func (l *Lease) tryOnce(ctx context.Context) {
	if _, err := l.TryAcquire(ctx); err != nil && ctx.Err() == nil {
		l.log.Warn("leader lease", zap.Error(err))
	}
}

func (l *Lease) release() {
	l.mu.Lock()
	held := time.Now().Before(l.until)
	l.until = time.Time{}
	l.mu.Unlock()
	if !held {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := l.st.db.ExecContext(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, l.o.Name, l.o.Holder); err != nil {
		l.log.Warn("release leader lease", zap.Error(err))
	}
}
