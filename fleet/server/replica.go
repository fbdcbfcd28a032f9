package server

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/opamp"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/postgres"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Store backends for Options.Store.
const (
	StoreSQLite   = "sqlite"
	StorePostgres = "postgres"
)

// fleetStore is what Run needs of a store: the fleet state plus the
// database handle /readyz pings.
type fleetStore interface {
	store.Store
	DB() *sql.DB
}

// replica is how this process shares the fleet with other processes.
// On SQLite it is alone: always the leader, its own keys dir. On
// PostgreSQL every replica keeps the fleet state in the one database,
// shares the signing keys through it, advances rollouts only while it
// holds the leader lease, and pushes configs only to its own agents. The
// profile store stays local to each replica (a shared object store is
// the way to scale it).
type replica struct {
	st    fleetStore
	keys  *token.KeySet
	lease *postgres.Lease // nil: alone, always the leader
	// bus carries revocations, rotations and assignment changes between
	// replicas (in-process on SQLite); pgBus is it on PostgreSQL.
	bus   store.Bus
	pgBus *postgres.Bus
	// fallback is how often the store is re-read while the bus is live
	// (0: the readers' defaults).
	fallback time.Duration
	changes  changes
	log      *zap.Logger
}

// openReplica opens the store that o names, the signing keys and the
// bus between replicas (its metrics go to reg).
func openReplica(ctx context.Context, o Options, log *zap.Logger, reg prometheus.Registerer) (*replica, error) {
	keyDir := filepath.Join(o.DataDir, "keys")
	r := &replica{log: log, fallback: fallbackHook(log)}
	openKeys := func() (err error) {
		r.keys, err = token.OpenKeySet(keyDir)
		return err
	}
	switch o.Store {
	case "", StoreSQLite:
		if o.PostgresDSN != "" {
			return nil, fmt.Errorf("--postgres-dsn needs --store %s", StorePostgres)
		}
		if err := openKeys(); err != nil {
			return nil, err
		}
		st, err := sqlite.Open(ctx, filepath.Join(o.DataDir, "fleet.db"))
		if err != nil {
			return nil, err
		}
		r.st = st
		r.bus = &store.LocalBus{}
	case StorePostgres:
		if o.PostgresDSN == "" {
			return nil, fmt.Errorf("--store %s needs --postgres-dsn", StorePostgres)
		}
		st, err := postgres.Open(ctx, o.PostgresDSN, nil)
		if err != nil {
			return nil, err
		}
		// Other replicas hold live connections: no markGone.
		if err := st.ShareKeyDir(ctx, keyDir, openKeys); err != nil {
			st.Close()
			return nil, err
		}
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		r.lease, err = st.NewLease(postgres.LeaseOptions{
			Name: "rollout", Holder: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:])), Logger: log.Named("lease"),
		})
		if err != nil {
			st.Close()
			return nil, err
		}
		r.pgBus, err = st.NewBus(postgres.BusOptions{Logger: log.Named("bus"), Registerer: reg})
		if err != nil {
			st.Close()
			return nil, err
		}
		r.st, r.bus = st, r.pgBus
	default:
		return nil, fmt.Errorf("--store: %q is neither %s nor %s", o.Store, StoreSQLite, StorePostgres)
	}
	return r, nil
}

// leader is rollout.Options.Leader: nil (always) when alone.
func (r *replica) leader() func() bool {
	if r.lease == nil {
		return nil
	}
	return r.lease.Leader
}

// rolloutStore is the store the rollout controller and the release
// manager write through: with other replicas it publishes assignment
// changes on the bus.
func (r *replica) rolloutStore() store.Store {
	ps := &publishingStore{fleetStore: r.st, bus: r.bus, changed: r.changed, log: r.log.Named("bus")}
	if rs, ok := r.st.(store.Releases); ok {
		return &publishingReleases{publishingStore: ps, Releases: rs}
	}
	return ps
}

// changed records that agents or rollouts of a project changed here; the
// console's live events on every replica refresh soon after.
func (r *replica) changed(projectID string) { r.changes.add(projectID) }

// agentStatus is what a replica tells the rollout controller and the
// release manager of an agent whose assignment changed elsewhere.
type agentStatus interface{ AssignmentChanged(a *store.Agent) }

// run keeps the leader lease, listens on the bus and pushes configs and
// releases that another replica assigned to this replica's agents, until
// ctx ends.
func (r *replica) run(ctx context.Context, op *opamp.Server, to ...agentStatus) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.changes.run(ctx, r.bus, 200*time.Millisecond, r.log.Named("bus")) })
	if r.lease == nil {
		return nil // alone: the writer of an assignment pushes it itself
	}
	wg.Go(func() { _ = r.lease.Run(ctx) }) // returns nil when ctx ends; logs its own errors
	if r.pgBus != nil {
		wg.Go(func() { _ = r.pgBus.Run(ctx) })
	}
	return r.reconcile(ctx, op, to, time.Second, r.fallback)
}

// reconcile queues this replica's connected agents whose assignment
// changed for a check by the rollout controller (which pushes when the
// agent runs another hash) and the release manager. The leader changes
// assignments of agents connected anywhere and publishes them on the
// bus; this is how they reach the agents connected here. The
// assignments are also polled: every tick while the bus is not live,
// every fallback (0 means 10s) while it is, and at once on a resync.
func (r *replica) reconcile(ctx context.Context, op *opamp.Server, to []agentStatus, every, fallback time.Duration) error {
	if fallback <= 0 {
		fallback = 10 * time.Second
	}
	seen := map[string]string{} // agent id → config hash + update time
	t := time.NewTicker(every)
	defer t.Stop()
	assigned := r.bus.Subscribe(ctx, store.TopicAssign)
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-assigned:
			if !ok {
				assigned = nil
				continue
			}
			r.queue(ctx, op, to, ev.IDs)
			if !ev.Resync {
				continue
			}
		case <-t.C:
			if r.bus.Live() && time.Since(last) < fallback {
				continue
			}
		}
		last = time.Now()
		r.poll(ctx, op, to, seen)
	}
}

// queue hands the agents of ids that are connected here to the readers.
func (r *replica) queue(ctx context.Context, op *opamp.Server, to []agentStatus, ids []string) {
	if len(ids) == 0 {
		return
	}
	local := map[string]bool{}
	for _, id := range op.Connected() {
		local[id] = true
	}
	for _, id := range ids {
		if !local[id] {
			continue
		}
		a, err := r.st.AgentByID(ctx, id)
		if err != nil {
			continue
		}
		for _, f := range to {
			f.AssignmentChanged(a)
		}
	}
}

// poll reads every project's assignments and queues the agents connected
// here whose assignment changed since the last poll.
func (r *replica) poll(ctx context.Context, op *opamp.Server, to []agentStatus, seen map[string]string) {
	ids := op.Connected()
	if len(ids) == 0 {
		return
	}
	local := make(map[string]bool, len(ids))
	for _, id := range ids {
		local[id] = true
	}
	ps, err := r.st.ListProjects(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("reconcile assignments: list projects", zap.Error(err))
		}
		return
	}
	var changed []string
	for _, p := range ps {
		asgs, err := r.st.ListAssignments(ctx, p.ID)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("reconcile assignments", zap.String("project", p.ID), zap.Error(err))
			}
			continue
		}
		for _, a := range asgs {
			key := a.ConfigHash + "@" + a.UpdatedAt.String()
			if seen[a.AgentID] == key {
				continue
			}
			seen[a.AgentID] = key
			if local[a.AgentID] {
				changed = append(changed, a.AgentID)
			}
		}
	}
	r.queue(ctx, op, to, changed)
}
