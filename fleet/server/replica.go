package server

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/opamp"
	"github.com/fleetprof/fleetprof/fleet/rollout"
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
	log   *zap.Logger
}

// openReplica opens the store that o names and the signing keys.
func openReplica(ctx context.Context, o Options, log *zap.Logger) (*replica, error) {
	keyDir := filepath.Join(o.DataDir, "keys")
	r := &replica{log: log}
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
		// No agent is connected to a process that just started.
		if err := st.MarkAllDisconnected(ctx); err != nil {
			st.Close()
			return nil, err
		}
		r.st = st
	case StorePostgres:
		if o.PostgresDSN == "" {
			return nil, fmt.Errorf("--store %s needs --postgres-dsn", StorePostgres)
		}
		st, err := postgres.Open(ctx, o.PostgresDSN, nil)
		if err != nil {
			return nil, err
		}
		// Other replicas hold live connections: no MarkAllDisconnected.
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
		r.st = st
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

// run keeps the leader lease and pushes configs that another replica
// assigned to this replica's agents, until ctx ends.
func (r *replica) run(ctx context.Context, op *opamp.Server, ro *rollout.Controller) error {
	if r.lease == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.lease.Run(ctx) // returns nil when ctx ends; logs its own errors
	}()
	err := r.reconcile(ctx, op, ro, time.Second)
	<-done
	return err
}

// reconcile polls the assignments every tick and queues this replica's
// connected agents whose assignment changed for a config check by the
// rollout controller (which pushes when the agent runs another hash).
// The leader changes assignments of agents connected anywhere; this is
// how they reach the agents connected here.
func (r *replica) reconcile(ctx context.Context, op *opamp.Server, ro *rollout.Controller, every time.Duration) error {
	seen := map[string]string{} // agent id → config hash + update time
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		ids := op.Connected()
		if len(ids) == 0 {
			continue
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
			continue
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
		for _, id := range changed {
			a, err := r.st.AgentByID(ctx, id)
			if err != nil {
				continue
			}
			ro.OnAgentStatus(a)
		}
	}
}
