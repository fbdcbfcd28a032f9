package auth

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/token"
)

func setup(t *testing.T) (*Authenticator, *Authenticator, store.Store) {
	t.Helper()
	dir := t.TempDir()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := token.OpenKeySet(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateProject(ctx, &store.Project{ID: "p1", Name: "p1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	a, err := New(ctx, Options{Keys: keys, Store: st, RefreshInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// A second authenticator on the same store stands in for a replica.
	b, err := New(ctx, Options{Keys: keys, Store: st, RefreshInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a, b, st
}

func TestScopes(t *testing.T) {
	a, _, _ := setup(t)
	ctx := t.Context()
	issue := func(k token.Kind, project string) string {
		raw, _, err := a.Issue(ctx, IssueRequest{Kind: k, ProjectID: project, AgentID: "agent-1", Name: string(k)})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	cases := []struct {
		name  string
		raw   string
		write error
		admin error
	}{
		{"project token writes", issue(token.KindProject, "p1"), nil, token.ErrScope},
		{"agent credential writes", issue(token.KindAgent, "p1"), nil, token.ErrScope},
		{"bootstrap cannot write", issue(token.KindBootstrap, "p1"), token.ErrScope, token.ErrScope},
		{"admin cannot write profiles", issue(token.KindAdmin, ""), token.ErrScope, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.AuthorizeWrite(ctx, tc.raw)
			if !errors.Is(err, tc.write) && !(tc.write == nil && err == nil) {
				t.Errorf("AuthorizeWrite: %v, want %v", err, tc.write)
			}
			_, err = a.Admin(ctx, tc.raw)
			if !errors.Is(err, tc.admin) && !(tc.admin == nil && err == nil) {
				t.Errorf("Admin: %v, want %v", err, tc.admin)
			}
		})
	}
	// A well-signed token of a project that does not exist.
	raw, _, err := a.o.Keys.Issue(token.IssueOptions{Kind: token.KindProject, ProjectID: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthorizeWrite(ctx, raw); !errors.Is(err, token.ErrUnknownProject) {
		t.Fatalf("unknown project: %v", err)
	}
}

// A revocation made by one replica reaches the other through the store
// within its refresh interval, and its subscribers hear of it.
func TestRevocationCrossesReplicas(t *testing.T) {
	a, b, _ := setup(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = b.Run(ctx) }()
	raw, tk, err := a.Issue(ctx, IssueRequest{Kind: token.KindProject, ProjectID: "p1", Name: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AuthorizeWrite(ctx, raw); err != nil {
		t.Fatal(err)
	}
	var heard atomic.Value
	b.OnRevoke(func(jti string) { heard.Store(jti) })
	if err := a.Revoke(ctx, tk.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuthorizeWrite(ctx, raw); !errors.Is(err, token.ErrRevoked) {
		t.Fatalf("revoking replica still accepts: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := b.AuthorizeWrite(ctx, raw); errors.Is(err, token.ErrRevoked) && heard.Load() == tk.ID {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("other replica did not learn of the revocation within 5s")
}

func TestBearer(t *testing.T) {
	for in, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "": "", "Bearer": ""} {
		got, ok := Bearer(in)
		if got != want || ok != (want != "") {
			t.Errorf("Bearer(%q) = %q, %v", in, got, ok)
		}
	}
}

// toggleBus is a LocalBus whose liveness the test sets.
type toggleBus struct {
	store.LocalBus
	live atomic.Bool
}

func (b *toggleBus) Live() bool { return b.live.Load() }

// With a bus, a revocation reaches the other replica by notification at
// once, although its store re-read is slowed to an hour; when the bus is
// down the replica polls the store at its fast rate again; a Resync
// makes it re-read at once.
func TestRevocationByNotification(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := token.OpenKeySet(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateProject(ctx, &store.Project{ID: "p1", Name: "p1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	bus := &toggleBus{}
	bus.live.Store(true)
	newAuth := func(b store.Bus) *Authenticator {
		au, err := New(ctx, Options{Keys: keys, Store: st, Bus: b, RefreshInterval: 50 * time.Millisecond, FallbackInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return au
	}
	a, b := newAuth(bus), newAuth(bus)
	// c shares the store but hears no notifications (another bus).
	cbus := &toggleBus{}
	cbus.live.Store(true)
	c := newAuth(cbus)
	for _, au := range []*Authenticator{b, c} {
		go func() { _ = au.Run(ctx) }()
	}
	heard := make(chan string, 10)
	b.OnRevoke(func(jti string) { heard <- jti })
	heardC := make(chan string, 10)
	c.OnRevoke(func(jti string) { heardC <- jti })
	issue := func() string {
		_, tk, err := a.Issue(ctx, IssueRequest{Kind: token.KindProject, ProjectID: "p1", Name: "w"})
		if err != nil {
			t.Fatal(err)
		}
		return tk.ID
	}
	wait := func(ch chan string, want string, within time.Duration) bool {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case got := <-ch:
				if got == want {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // let Run start and do its first re-read

	id1 := issue()
	start := time.Now()
	if err := a.Revoke(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if !wait(heard, id1, 2*time.Second) {
		t.Fatal("replica b did not hear the revocation by notification within 2s")
	}
	t.Logf("revocation heard by notification after %s", time.Since(start))
	if wait(heardC, id1, 500*time.Millisecond) {
		t.Fatal("replica c (no notification, store re-read slowed to 1h) heard the revocation: it is polling fast")
	}
	// c's bus goes down: it polls the store at RefreshInterval.
	cbus.live.Store(false)
	if !wait(heardC, id1, 2*time.Second) {
		t.Fatal("replica c did not poll the store while its bus was down")
	}
	// A Resync makes c re-read at once although its bus is live again.
	cbus.live.Store(true)
	time.Sleep(200 * time.Millisecond)
	id2 := issue()
	if err := a.Revoke(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if wait(heardC, id2, 300*time.Millisecond) {
		t.Fatal("replica c heard id2 before any resync")
	}
	cbus.ResyncAll()
	if !wait(heardC, id2, 2*time.Second) {
		t.Fatal("replica c did not re-read the store on Resync")
	}
}
