package postgres_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/postgres"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
	"github.com/fleetprof/fleetprof/internal/token"
	"github.com/fleetprof/fleetprof/test/pg"
)

func TestMain(m *testing.M) { os.Exit(pg.Main(m)) }

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := postgres.Open(t.Context(), pg.NewDatabase(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestConcurrentMigrations: replicas starting at once migrate once.
func TestConcurrentMigrations(t *testing.T) {
	dsn := pg.NewDatabase(t)
	var wg sync.WaitGroup
	stores := make([]*postgres.Store, 4)
	for i := range stores {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), dsn, nil)
			if err != nil {
				t.Error(err)
				return
			}
			stores[i] = s
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, s := range stores {
		defer s.Close()
	}
	got, err := stores[0].Migrations(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"0001_init", "0002_configs", "0003_users", "0004_releases", "0005_replicas", "0006_rollout_counts", "0007_agent_credential"}, got); diff != "" {
		t.Errorf("migrations (-want +got):\n%s", diff)
	}
}

// TestRestart: while the server is down requests fail with an error that
// says so; once it is back the same store works again, with every
// acknowledged write kept.
func TestRestart(t *testing.T) {
	ctx := t.Context()
	srv := pg.Shared(t)
	s := open(t, pg.NewDatabase(t))
	if err := s.CreateProject(ctx, storetest.Project("p1")); err != nil {
		t.Fatal(err)
	}
	if err := srv.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = srv.Restart(context.Background())
		}
	})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := s.ProjectByID(cctx, "p1")
	cancel()
	if err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("read while the server is down: %v, want a connection error", err)
	}
	t.Logf("while down: %v", err)
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// The first request after the restart may meet a dead pooled
	// connection at most once per connection; it must work within a few.
	var got *store.Project
	for i := range 20 {
		if got, err = s.ProjectByID(ctx, "p1"); err == nil {
			if i > 1 {
				t.Errorf("%d failed requests after the restart", i)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || got.ID != "p1" {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	if err := s.CreateProject(ctx, storetest.Project("p2")); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

func TestLease(t *testing.T) {
	ctx := t.Context()
	dsn := pg.NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	la, err := a.NewLease(postgres.LeaseOptions{Name: "rollout", Holder: "a", TTL: 2 * time.Second, Renew: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.NewLease(postgres.LeaseOptions{Name: "rollout", Holder: "b", TTL: 2 * time.Second, Renew: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := la.TryAcquire(ctx); err != nil || !ok || !la.Leader() {
		t.Fatalf("a takes a free lease: %v %v", ok, err)
	}
	if ok, err := lb.TryAcquire(ctx); err != nil || ok || lb.Leader() {
		t.Fatalf("b takes a held lease: %v %v", ok, err)
	}
	if ok, _ := la.TryAcquire(ctx); !ok {
		t.Fatal("a cannot renew its own lease")
	}
	// a stops renewing (a crash): b gets it after the TTL, not before.
	start := time.Now()
	for {
		ok, err := lb.TryAcquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("b never took over an expired lease")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("b took over after %s, before the 2s TTL", d)
	}
	if la.Leader() {
		t.Error("a still believes it leads after its TTL")
	}
	if ok, _ := la.TryAcquire(ctx); ok {
		t.Error("a took the lease back from b")
	}

	// Run releases on stop, so the next replica need not wait the TTL.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- lb.Run(rctx) }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ok, err := la.TryAcquire(ctx); err != nil || !ok {
		t.Errorf("a after b released: %v %v", ok, err)
	}
}

// TestShareKeyDir: two replicas with their own key dirs end up with one
// active key, so each verifies the other's tokens.
func TestShareKeyDir(t *testing.T) {
	ctx := t.Context()
	dsn := pg.NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	var ka, kb *token.KeySet
	dirA, dirB := filepath.Join(t.TempDir(), "keys"), filepath.Join(t.TempDir(), "keys")
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := a.ShareKeyDir(ctx, dirA, func() (err error) { ka, err = token.OpenKeySet(dirA); return err }); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() {
		if err := b.ShareKeyDir(ctx, dirB, func() (err error) { kb, err = token.OpenKeySet(dirB); return err }); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}
	if ka.ActiveID() != kb.ActiveID() {
		t.Fatalf("active keys differ: %s and %s", ka.ActiveID(), kb.ActiveID())
	}
	raw, _, err := ka.Issue(token.IssueOptions{Kind: token.KindAdmin, Issuer: "http://a", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kb.Verify(raw, time.Now()); err != nil {
		t.Errorf("b verifies a's token: %v", err)
	}
	// A restart of b with an empty dir loads the same key again.
	dirC := filepath.Join(t.TempDir(), "keys")
	var kc *token.KeySet
	if err := b.ShareKeyDir(ctx, dirC, func() (err error) { kc, err = token.OpenKeySet(dirC); return err }); err != nil {
		t.Fatal(err)
	}
	if kc.ActiveID() != ka.ActiveID() {
		t.Errorf("fresh dir got active key %s, want %s", kc.ActiveID(), ka.ActiveID())
	}
}

// A database from before the credential columns (migration 0007) lists
// the credentials its records hold once migrated.
func TestCredentialColumnsFilledFromRecords(t *testing.T) {
	dsn := pg.NewDatabase(t)
	s := open(t, dsn)
	a := storetest.Agent("a1", "p1")
	a.CredentialID, a.CredentialHash = "j1", "00ff"
	b := storetest.Agent("a2", "p1")
	for _, ag := range []*store.Agent{a, b} {
		if err := s.UpsertAgent(t.Context(), ag); err != nil {
			t.Fatal(err)
		}
	}
	// Back to the schema before 0007: the records alone hold credentials.
	for _, q := range []string{
		`ALTER TABLE agents DROP COLUMN credential_id`,
		`ALTER TABLE agents DROP COLUMN credential_hash`,
		`DELETE FROM schema_migrations WHERE version = '0007_agent_credential'`,
	} {
		if _, err := s.DB().ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	got, err := open(t, dsn).ListAgentCredentials(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.AgentCredential{{AgentID: "a1", CredentialID: "j1", CredentialHash: "00ff"}}, got, cmpopts.IgnoreFields(store.AgentCredential{}, "Record", "RowVersion")); diff != "" {
		t.Errorf("credentials after the migration (-want +got):\n%s", diff)
	}
}
