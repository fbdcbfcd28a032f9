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
