package sqlite_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
)

func TestUsersOrgsSessions(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, t.TempDir()+"/f.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	org := &store.Org{ID: "o1", Name: "acme", CreatedAt: now}
	if err := st.CreateOrg(ctx, org); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateOrg(ctx, &store.Org{ID: "o2", Name: "acme", CreatedAt: now}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate org name: %v, want ErrConflict", err)
	}
	if err := st.CreateProject(ctx, &store.Project{ID: "p1", Name: "p", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetProjectOrg(ctx, "p1", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown org: %v", err)
	}
	if err := st.SetProjectOrg(ctx, "p1", "o1"); err != nil {
		t.Fatal(err)
	}
	m, err := st.ProjectOrgs(ctx)
	if err != nil || m["p1"] != "o1" {
		t.Fatalf("ProjectOrgs = %v, %v", m, err)
	}

	u := &store.User{ID: "u1", Name: "vera", KeyHash: "h1", ReadOnly: true, CreatedBy: "root", CreatedAt: now}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	got, err := st.UserByKeyHash(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(u, got); diff != "" {
		t.Errorf("user round trip (-want +got):\n%s", diff)
	}
	if err := st.SetMembership(ctx, store.Membership{UserID: "u1", OrgID: "o1", Role: store.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetMembership(ctx, store.Membership{UserID: "u1", OrgID: "o1", Role: store.RoleEditor}); err != nil {
		t.Fatal(err)
	}
	ms, _ := st.Memberships(ctx, "u1")
	if diff := cmp.Diff([]store.Membership{{UserID: "u1", OrgID: "o1", Role: store.RoleEditor}}, ms); diff != "" {
		t.Errorf("memberships (-want +got):\n%s", diff)
	}

	se := &store.Session{ID: "s1", CSRF: "c", Kind: "user", Subject: "u1", Name: "vera", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := st.CreateSession(ctx, se); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SessionByID(ctx, "s1", now); err != nil {
		t.Errorf("live session: %v", err)
	}
	if _, err := st.SessionByID(ctx, "s1", now.Add(2*time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired session: %v, want ErrNotFound", err)
	}
	// Deleting the user removes memberships and sessions.
	if err := st.DeleteUser(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SessionByID(ctx, "s1", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session of a deleted user: %v", err)
	}
	if ms, _ := st.Memberships(ctx, ""); len(ms) != 0 {
		t.Errorf("memberships left: %v", ms)
	}
	if err := st.DeleteUser(ctx, "u1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
}
