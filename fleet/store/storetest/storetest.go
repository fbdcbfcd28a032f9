package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Run runs the whole suite; newStore returns a fresh, empty store for
// each subtest (closed by the suite).
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	open := func(t *testing.T) store.Store {
		t.Helper()
		s := newStore(t)
		t.Cleanup(func() { s.Close() })
		return s
	}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Projects", testProjects},
		{"Tokens", testTokens},
		{"UseTokenLimit", testUseTokenLimit},
		{"Agents", testAgents},
		{"AgentConflicts", testAgentConflicts},
		{"AgentCredentials", testAgentCredentials},
		{"Audit", testAudit},
		{"ConfigVersions", testConfigVersions},
		{"Rollouts", testRollouts},
		{"RolloutCounts", testRolloutCounts},
		{"RolloutBatches", testRolloutBatches},
		{"Users", testUsers},
		{"Releases", testReleases},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

func testProjects(t *testing.T, s store.Store) {
	ctx := t.Context()
	if ps, err := s.ListProjects(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("empty store lists %d projects, %v", len(ps), err)
	}
	a, b := Project("p1"), Project("p2")
	b.CreatedAt = Now.Add(time.Second)
	must(t, s.CreateProject(ctx, a))
	must(t, s.CreateProject(ctx, b))
	dupName := Project("p3")
	dupName.Name = a.Name
	wantErr(t, "duplicate name", s.CreateProject(ctx, dupName), store.ErrConflict)
	wantErr(t, "duplicate id", s.CreateProject(ctx, Project("p1")), store.ErrConflict)
	got, err := s.ProjectByID(ctx, "p1")
	must(t, err)
	if diff := cmp.Diff(a, got); diff != "" {
		t.Errorf("ProjectByID (-want +got):\n%s", diff)
	}
	_, err = s.ProjectByID(ctx, "nope")
	wantErr(t, "unknown project", err, store.ErrNotFound)
	ps, err := s.ListProjects(ctx)
	must(t, err)
	if diff := cmp.Diff([]*store.Project{a, b}, ps); diff != "" {
		t.Errorf("ListProjects (-want +got):\n%s", diff)
	}
}

func testTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	exp := Now.Add(time.Hour)
	a := Token("t1", "p1")
	a.ExpiresAt = &exp
	b := Token("t2", "p1")
	b.Kind, b.MaxUses, b.Labels, b.CreatedAt = "enroll", 2, nil, Now.Add(time.Second)
	c := Token("t3", "p2")
	adm := &store.Token{ID: "t4", Name: "admin", Kind: "admin", ReadOnly: true, CreatedAt: Now}
	for _, tok := range []*store.Token{a, b, c, adm} {
		must(t, s.CreateToken(ctx, tok))
	}
	wantErr(t, "duplicate token", s.CreateToken(ctx, Token("t1", "p1")), store.ErrConflict)
	got, err := s.TokenByID(ctx, "t1")
	must(t, err)
	if diff := cmp.Diff(a, got); diff != "" {
		t.Errorf("TokenByID (-want +got):\n%s", diff)
	}
	if got, err := s.TokenByID(ctx, "t4"); err != nil || !got.ReadOnly || got.ProjectID != "" {
		t.Errorf("admin token: %+v, %v", got, err)
	}
	_, err = s.TokenByID(ctx, "nope")
	wantErr(t, "unknown token", err, store.ErrNotFound)

	ids := func(ts []*store.Token, err error) []string {
		t.Helper()
		must(t, err)
		out := []string{}
		for _, x := range ts {
			out = append(out, x.ID)
		}
		return out
	}
	if diff := cmp.Diff([]string{"t2", "t1"}, ids(s.ListTokens(ctx, "p1", ""))); diff != "" {
		t.Errorf("ListTokens p1, newest first (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"t2"}, ids(s.ListTokens(ctx, "p1", "enroll"))); diff != "" {
		t.Errorf("ListTokens p1 enroll (-want +got):\n%s", diff)
	}

	// Revocation: RevokedSince sees revocations at or after t; revoking
	// twice keeps the first time.
	if r, err := s.RevokedSince(ctx, time.Time{}); err != nil || len(r) != 0 {
		t.Fatalf("RevokedSince on no revocations: %v, %v", r, err)
	}
	t1 := Now.Add(10 * time.Second)
	must(t, s.RevokeToken(ctx, "t1", t1))
	must(t, s.RevokeToken(ctx, "t1", t1.Add(time.Minute)))
	wantErr(t, "revoke unknown", s.RevokeToken(ctx, "nope", t1), store.ErrNotFound)
	must(t, s.RevokeToken(ctx, "t3", t1.Add(time.Hour)))
	for _, tc := range []struct {
		since time.Time
		want  []string
	}{
		{time.Time{}, []string{"t1", "t3"}},
		{t1, []string{"t1", "t3"}},
		{t1.Add(time.Millisecond), []string{"t3"}},
		{t1.Add(2 * time.Hour), []string{}},
	} {
		got, err := s.RevokedSince(ctx, tc.since)
		must(t, err)
		if diff := cmp.Diff(tc.want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b }), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("RevokedSince(%s) (-want +got):\n%s", tc.since, diff)
		}
	}
	got, err = s.TokenByID(ctx, "t1")
	must(t, err)
	if got.RevokedAt == nil || !got.RevokedAt.Equal(t1) {
		t.Errorf("RevokedAt = %v, want the first revocation %v", got.RevokedAt, t1)
	}

	// Uses: MaxUses 2 allows two, then ErrExhausted; 0 means unlimited.
	u1 := Now.Add(time.Minute)
	must(t, s.UseToken(ctx, "t2", u1))
	must(t, s.UseToken(ctx, "t2", u1.Add(time.Second)))
	wantErr(t, "third use", s.UseToken(ctx, "t2", u1.Add(2*time.Second)), store.ErrExhausted)
	wantErr(t, "use unknown", s.UseToken(ctx, "nope", u1), store.ErrNotFound)
	got, err = s.TokenByID(ctx, "t2")
	must(t, err)
	if got.Uses != 2 || got.LastUsedAt == nil || !got.LastUsedAt.Equal(u1.Add(time.Second)) {
		t.Errorf("after two uses: uses %d, last used %v", got.Uses, got.LastUsedAt)
	}
	for range 5 {
		must(t, s.UseToken(ctx, "t3", u1))
	}
	must(t, s.TouchToken(ctx, "t4", u1))
	got, err = s.TokenByID(ctx, "t4")
	must(t, err)
	if got.Uses != 0 || got.LastUsedAt == nil || !got.LastUsedAt.Equal(u1) {
		t.Errorf("touch: uses %d, last used %v", got.Uses, got.LastUsedAt)
	}
}

// testUseTokenLimit: concurrent enrollments never pass MaxUses.
func testUseTokenLimit(t *testing.T, s store.Store) {
	ctx := t.Context()
	tok := Token("boot", "p1")
	tok.Kind, tok.MaxUses = "enroll", 5
	must(t, s.CreateToken(ctx, tok))
	var ok, exhausted atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			switch err := s.UseToken(ctx, "boot", Now); {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrExhausted):
				exhausted.Add(1)
			default:
				t.Errorf("UseToken: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 5 || exhausted.Load() != 15 {
		t.Errorf("20 concurrent uses of a 5-use token: %d ok, %d exhausted", ok.Load(), exhausted.Load())
	}
}

var ignoreTimes = cmpopts.IgnoreFields(store.Agent{}, "CreatedAt", "UpdatedAt")

func testAgents(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := Agent("a1", "p1")
	must(t, s.UpsertAgent(ctx, a))
	if a.RowVersion != 1 || a.CreatedAt.IsZero() || a.UpdatedAt.IsZero() {
		t.Errorf("created agent: version %d, created %v, updated %v", a.RowVersion, a.CreatedAt, a.UpdatedAt)
	}
	got, err := s.AgentByID(ctx, "a1")
	must(t, err)
	if diff := cmp.Diff(a, got, ignoreTimes); diff != "" {
		t.Errorf("AgentByID (-want +got):\n%s", diff)
	}
	got.ConfigHash, got.ConfigStatus, got.Health = "abc", "APPLIED", "ok"
	must(t, s.UpsertAgent(ctx, got))
	if got.RowVersion != 2 {
		t.Errorf("updated version %d, want 2", got.RowVersion)
	}
	again, err := s.AgentByID(ctx, "a1")
	must(t, err)
	if diff := cmp.Diff(got, again, ignoreTimes); diff != "" {
		t.Errorf("after update (-want +got):\n%s", diff)
	}
	_, err = s.AgentByID(ctx, "nope")
	wantErr(t, "unknown agent", err, store.ErrNotFound)

	b, c := Agent("a2", "p1"), Agent("a3", "p2")
	b.Labels["platform"] = "kubernetes"
	c.Connected = false
	must(t, s.UpsertAgent(ctx, b))
	must(t, s.UpsertAgent(ctx, c))
	list := func(f store.AgentFilter) []string {
		t.Helper()
		as, err := s.ListAgents(ctx, f)
		must(t, err)
		out := []string{}
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    store.AgentFilter
		want []string
	}{
		{"all", store.AgentFilter{}, []string{"a1", "a2", "a3"}},
		{"project", store.AgentFilter{ProjectID: "p1"}, []string{"a1", "a2"}},
		{"match", store.AgentFilter{Match: func(a *store.Agent) bool { return a.Labels["platform"] == "systemd" }}, []string{"a1", "a3"}},
		{"both", store.AgentFilter{ProjectID: "p2", Match: func(a *store.Agent) bool { return a.Labels["platform"] == "kubernetes" }}, []string{}},
	} {
		if diff := cmp.Diff(tc.want, list(tc.f)); diff != "" {
			t.Errorf("ListAgents %s (-want +got):\n%s", tc.name, diff)
		}
	}

	// A Brief listing fills BriefFields as a full read does, and nothing
	// else; its selector Match sees the labels.
	d := Agent("b1", "pb")
	d.EffectiveConfig, d.Healthy, d.ConfigError, d.ConfigHash, d.ConfigStatus, d.Health = "big: yaml", false, "boom", "h1", "FAILED", "sick"
	must(t, s.UpsertAgent(ctx, d))
	must(t, s.UpsertAgent(ctx, Agent("b2", "pb")))
	full, err := s.AgentByID(ctx, "b1")
	must(t, err)
	brief, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "pb", Brief: true, Match: func(a *store.Agent) bool { return a.Labels["node"] == "host-b1" }})
	must(t, err)
	if len(brief) != 1 {
		t.Fatalf("brief listing: %d agents, want b1", len(brief))
	}
	var want store.Agent
	wv, fv := reflect.ValueOf(&want).Elem(), reflect.ValueOf(full).Elem()
	for _, f := range store.BriefFields {
		wv.FieldByName(f).Set(fv.FieldByName(f))
	}
	if diff := cmp.Diff(&want, brief[0]); diff != "" {
		t.Errorf("brief listing (-want +got):\n%s", diff)
	}
}

// testAgentConflicts: stale versions and duplicate creates fail with
// ErrConflict and leave the row and the caller's version alone; of
// concurrent writers at one version exactly one wins.
// testAgentCredentials: the recorded credentials of the agents whose
// record holds a credential hash, and only those.
func testAgentCredentials(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got, err := s.ListAgentCredentials(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty store: %v, %v; want none", got, err)
	}
	a := Agent("a1", "p1")
	a.CredentialID, a.CredentialHash = "j1", "00ff"
	b := Agent("a2", "p2")
	b.CredentialID = "j2" // no hash recorded (a record from before)
	c := Agent("a3", "p1")
	for _, ag := range []*store.Agent{a, b, c} {
		must(t, s.UpsertAgent(ctx, ag))
	}
	got, err := s.ListAgentCredentials(ctx)
	must(t, err)
	if diff := cmp.Diff([]store.AgentCredential{{AgentID: "a1", CredentialID: "j1", CredentialHash: "00ff"}}, got, noRecord); diff != "" {
		t.Errorf("ListAgentCredentials (-want +got):\n%s", diff)
	}
	sameRecords(t, s, got)
	// Updates keep the listing current: a rotation replaces a1's, a2
	// gets its first recorded sum.
	a.CredentialID, a.CredentialHash = "j1b", "11ee"
	b.CredentialHash = "22dd"
	must(t, s.UpsertAgent(ctx, a))
	must(t, s.UpsertAgent(ctx, b))
	got, err = s.ListAgentCredentials(ctx)
	must(t, err)
	slices.SortFunc(got, func(x, y store.AgentCredential) int { return strings.Compare(x.AgentID, y.AgentID) })
	want := []store.AgentCredential{{AgentID: "a1", CredentialID: "j1b", CredentialHash: "11ee"}, {AgentID: "a2", CredentialID: "j2", CredentialHash: "22dd"}}
	if diff := cmp.Diff(want, got, noRecord); diff != "" {
		t.Errorf("ListAgentCredentials after updates (-want +got):\n%s", diff)
	}
	sameRecords(t, s, got)
}

// noRecord compares credential listings without the records, which
// sameRecords checks.
var noRecord = cmpopts.IgnoreFields(store.AgentCredential{}, "Record", "RowVersion")

// sameRecords checks that each listed record decodes to the agent's
// stored record, at its row version.
func sameRecords(t *testing.T, s store.Store, creds []store.AgentCredential) {
	t.Helper()
	for _, c := range creds {
		want, err := s.AgentByID(t.Context(), c.AgentID)
		must(t, err)
		got, err := store.DecodeAgent(c.Record, c.RowVersion)
		if err != nil {
			t.Errorf("record listed with %s's credential: %v", c.AgentID, err)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("record listed with %s's credential (-stored +listed):\n%s", c.AgentID, diff)
		}
	}
}

func testAgentConflicts(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := Agent("a1", "p1")
	must(t, s.UpsertAgent(ctx, a))
	dup := Agent("a1", "p1")
	wantErr(t, "second create", s.UpsertAgent(ctx, dup), store.ErrConflict)
	if dup.RowVersion != 0 {
		t.Errorf("failed create changed RowVersion to %d", dup.RowVersion)
	}
	stale := *a
	a.Hostname = "new"
	must(t, s.UpsertAgent(ctx, a))
	stale.Hostname = "stale"
	wantErr(t, "stale write", s.UpsertAgent(ctx, &stale), store.ErrConflict)
	if stale.RowVersion != 1 {
		t.Errorf("failed write changed RowVersion to %d", stale.RowVersion)
	}
	if got, _ := s.AgentByID(ctx, "a1"); got.Hostname != "new" {
		t.Errorf("stale write landed: hostname %q", got.Hostname)
	}
	ghost := Agent("ghost", "p1")
	ghost.RowVersion = 4
	wantErr(t, "update of a missing agent", s.UpsertAgent(ctx, ghost), store.ErrConflict)

	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		w := *a
		w.Labels = map[string]string{"writer": fmt.Sprint(i)}
		wg.Go(func() {
			switch err := s.UpsertAgent(ctx, &w); {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("concurrent upsert: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 7 {
		t.Errorf("8 writers at one version: %d won, %d conflicts; want 1 and 7", wins.Load(), conflicts.Load())
	}
	if got, _ := s.AgentByID(ctx, "a1"); got.RowVersion != a.RowVersion+1 {
		t.Errorf("version after the race %d, want %d", got.RowVersion, a.RowVersion+1)
	}
}

func testAudit(t *testing.T, s store.Store) {
	ctx := t.Context()
	var want []*store.AuditEntry
	for i := range 5 {
		e := &store.AuditEntry{Time: Now.Add(time.Duration(i) * time.Second), Actor: "admin", ProjectID: []string{"p1", "p2"}[i%2],
			Action: "token.create", Target: fmt.Sprint("t", i), Result: "ok"}
		must(t, s.AppendAudit(ctx, e))
		if e.ID == 0 || (len(want) > 0 && e.ID <= want[len(want)-1].ID) {
			t.Errorf("entry %d got id %d", i, e.ID)
		}
		want = append(want, e)
	}
	noTime := &store.AuditEntry{Actor: "fleet", Action: "rollout.complete", Result: "ok"}
	must(t, s.AppendAudit(ctx, noTime))
	if noTime.Time.IsZero() {
		t.Error("AppendAudit left a zero time")
	}
	got, err := s.ListAudit(ctx, "p1", 0)
	must(t, err)
	if diff := cmp.Diff([]*store.AuditEntry{want[4], want[2], want[0]}, got); diff != "" {
		t.Errorf("ListAudit p1, newest first (-want +got):\n%s", diff)
	}
	got, err = s.ListAudit(ctx, "", 2)
	must(t, err)
	if len(got) != 2 || got[0].ID != noTime.ID || got[1].ID != want[4].ID {
		t.Errorf("ListAudit all, limit 2: %+v", got)
	}
}

func testConfigVersions(t *testing.T, s store.Store) {
	ctx := t.Context()
	var vs []*store.ConfigVersion
	for i, h := range []string{"aa", "bb"} {
		cv := &store.ConfigVersion{ID: "c" + h, ProjectID: "p", Hash: h, YAML: "sampling: {frequency_hz: 19}\n", CreatedBy: "me", CreatedAt: Now}
		must(t, s.CreateConfigVersion(ctx, cv))
		if cv.Version != i+1 {
			t.Errorf("version %d, want %d", cv.Version, i+1)
		}
		vs = append(vs, cv)
	}
	dup := &store.ConfigVersion{ID: "dup", ProjectID: "p", Hash: "aa", CreatedAt: Now}
	wantErr(t, "duplicate hash", s.CreateConfigVersion(ctx, dup), store.ErrConflict)
	if dup.Version != 0 {
		t.Errorf("failed create set Version %d", dup.Version)
	}
	other := &store.ConfigVersion{ID: "q1", ProjectID: "q", Hash: "aa", CreatedAt: Now}
	must(t, s.CreateConfigVersion(ctx, other))
	if other.Version != 1 {
		t.Errorf("other project: version %d, want 1", other.Version)
	}
	got, err := s.ConfigVersionByID(ctx, "cbb")
	must(t, err)
	if diff := cmp.Diff(vs[1], got); diff != "" {
		t.Errorf("ConfigVersionByID (-want +got):\n%s", diff)
	}
	if got, err := s.ConfigVersionByHash(ctx, "p", "aa"); err != nil || got.ID != "caa" {
		t.Errorf("ConfigVersionByHash: %+v, %v", got, err)
	}
	_, err = s.ConfigVersionByHash(ctx, "p", "zz")
	wantErr(t, "unknown hash", err, store.ErrNotFound)
	_, err = s.ConfigVersionByID(ctx, "nope")
	wantErr(t, "unknown config", err, store.ErrNotFound)
	list, err := s.ListConfigVersions(ctx, "p")
	must(t, err)
	if diff := cmp.Diff([]*store.ConfigVersion{vs[1], vs[0]}, list); diff != "" {
		t.Errorf("ListConfigVersions, newest first (-want +got):\n%s", diff)
	}

	// Concurrent creates of distinct hashes get distinct numbers.
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			cv := &store.ConfigVersion{ID: fmt.Sprint("cc", i), ProjectID: "p", Hash: fmt.Sprint("h", i), CreatedAt: Now}
			if err := s.CreateConfigVersion(ctx, cv); err != nil {
				t.Errorf("concurrent create: %v", err)
			}
		})
	}
	wg.Wait()
	list, err = s.ListConfigVersions(ctx, "p")
	must(t, err)
	for i, cv := range list {
		if cv.Version != len(list)-i {
			t.Errorf("versions after concurrent creates are not 1..%d: %d at %d", len(list), cv.Version, i)
		}
	}

	// Assignments upsert per agent.
	asg := []*store.Assignment{
		{AgentID: "a1", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", RolloutID: "r1", UpdatedAt: Now},
		{AgentID: "a2", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", UpdatedAt: Now},
	}
	must(t, s.SetAssignments(ctx, asg))
	moved := &store.Assignment{AgentID: "a2", ProjectID: "p", ConfigID: "cbb", ConfigHash: "bb", RolloutID: "r2", UpdatedAt: Now.Add(time.Second)}
	must(t, s.SetAssignments(ctx, []*store.Assignment{moved}))
	must(t, s.SetAssignments(ctx, nil))
	got2, err := s.AssignmentByAgent(ctx, "a2")
	must(t, err)
	if diff := cmp.Diff(moved, got2); diff != "" {
		t.Errorf("AssignmentByAgent (-want +got):\n%s", diff)
	}
	_, err = s.AssignmentByAgent(ctx, "nope")
	wantErr(t, "no assignment", err, store.ErrNotFound)
	all, err := s.ListAssignments(ctx, "p")
	must(t, err)
	if diff := cmp.Diff([]*store.Assignment{asg[0], moved}, all); diff != "" {
		t.Errorf("ListAssignments (-want +got):\n%s", diff)
	}
}

// testRolloutCounts: progress counted in the store, per stage and state.
func testRolloutCounts(t *testing.T, s store.Store) {
	ctx := t.Context()
	cv := &store.ConfigVersion{ID: "caa", ProjectID: "p", Hash: "aa", YAML: "x", CreatedAt: Now}
	must(t, s.CreateConfigVersion(ctx, cv))
	must(t, s.CreateRollout(ctx, Rollout("r9", "p", cv), []*store.RolloutAgent{
		{RolloutID: "r9", AgentID: "a2", Stage: 1, State: "waiting", UpdatedAt: Now},
		{RolloutID: "r9", AgentID: "a1", Stage: 0, State: "waiting", UpdatedAt: Now},
		{RolloutID: "r9", AgentID: "a3", Stage: 1, State: "skipped", UpdatedAt: Now},
		{RolloutID: "r9", AgentID: "a4", Stage: 1, State: "waiting", UpdatedAt: Now},
	}))
	counts, err := s.CountRolloutAgents(ctx, "r9")
	must(t, err)
	if diff := cmp.Diff([]store.RolloutAgentCount{{Stage: 0, State: "waiting", N: 1}, {Stage: 1, State: "skipped", N: 1}, {Stage: 1, State: "waiting", N: 2}}, counts); diff != "" {
		t.Errorf("CountRolloutAgents (-want +got):\n%s", diff)
	}

	// The agents a rollout step waits for: one stage and state, through
	// the rollout's rows (a5 is in no rollout, a3 in another state).
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5"} {
		must(t, s.UpsertAgent(ctx, &store.Agent{ID: id, ProjectID: "p", Labels: map[string]string{"n": id}, ConfigStatus: "APPLIED", Connected: true}))
	}
	for _, brief := range []bool{false, true} {
		list, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "p", Brief: brief, InRollout: &store.RolloutSlice{RolloutID: "r9", Stage: 1, State: "waiting"}})
		must(t, err)
		var ids []string
		for _, a := range list {
			ids = append(ids, a.ID)
			if a.ConfigStatus != "APPLIED" || !a.Connected || a.Labels["n"] != a.ID {
				t.Errorf("InRollout listing (brief %v): agent %+v lacks its fields", brief, a)
			}
		}
		if diff := cmp.Diff([]string{"a2", "a4"}, ids); diff != "" {
			t.Errorf("ListAgents InRollout r9 stage 1 waiting (brief %v) (-want +got):\n%s", brief, diff)
		}
	}
	if list, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "other", InRollout: &store.RolloutSlice{RolloutID: "r9", Stage: 1, State: "waiting"}}); err != nil || len(list) != 0 {
		t.Errorf("InRollout with another project: %d agents, %v; want none", len(list), err)
	}

	// The agents a completing rollout did not reach: none of its rows.
	for _, brief := range []bool{false, true} {
		list, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "p", Brief: brief, NotInRollout: "r9"})
		must(t, err)
		if len(list) != 1 || list[0].ID != "a5" || list[0].Labels["n"] != "a5" || !list[0].Connected {
			t.Errorf("ListAgents NotInRollout r9 (brief %v): got %+v, want a5 with its fields", brief, list)
		}
	}
	if list, err := s.ListAgents(ctx, store.AgentFilter{ProjectID: "p", NotInRollout: "none"}); err != nil || len(list) != 5 {
		t.Errorf("NotInRollout of a rollout without rows: %d agents, %v; want all 5", len(list), err)
	}
}

// testRolloutBatches: a rollout change larger than one multi-row
// statement (store.RowsPerInsert), with an agent listed twice (the last
// row wins), writes every row and assignment.
func testRolloutBatches(t *testing.T, s store.Store) {
	ctx := t.Context()
	cv := &store.ConfigVersion{ID: "cbb", ProjectID: "p", Hash: "bb", YAML: "x", CreatedAt: Now}
	must(t, s.CreateConfigVersion(ctx, cv))
	n := 2*store.RowsPerInsert + 7
	var ras []*store.RolloutAgent
	for i := range n {
		ras = append(ras, &store.RolloutAgent{RolloutID: "rb", AgentID: fmt.Sprintf("a%05d", i), Stage: i % 3, State: "waiting", UpdatedAt: Now})
	}
	r := Rollout("rb", "p", cv)
	must(t, s.CreateRollout(ctx, r, ras))
	ch := &store.RolloutChange{}
	for i, ra := range ras {
		u := *ra
		u.State, u.PreviousConfigID, u.UpdatedAt = "assigned", "prev", Now.Add(time.Second)
		ch.Agents = append(ch.Agents, &u)
		ch.Assign = append(ch.Assign, &store.Assignment{AgentID: ra.AgentID, ProjectID: "p", ConfigID: cv.ID, ConfigHash: cv.Hash, RolloutID: "rb", UpdatedAt: Now})
		if i == 3 {
			ch.Agents = append(ch.Agents, &store.RolloutAgent{RolloutID: "rb", AgentID: ra.AgentID, Stage: ra.Stage, State: "failed", Error: "later", UpdatedAt: Now.Add(2 * time.Second)})
			ch.Assign = append(ch.Assign, &store.Assignment{AgentID: ra.AgentID, ProjectID: "p", ConfigID: cv.ID, ConfigHash: "later", RolloutID: "rb", UpdatedAt: Now})
		}
	}
	must(t, s.ApplyRolloutChange(ctx, ch))
	got, err := s.ListRolloutAgents(ctx, "rb")
	must(t, err)
	if len(got) != n {
		t.Fatalf("%d rows after the change, want %d", len(got), n)
	}
	for _, ra := range got {
		want := "assigned"
		if ra.AgentID == "a00003" {
			want = "failed"
		}
		if ra.State != want || (want == "assigned" && ra.PreviousConfigID != "prev") {
			t.Fatalf("row %+v: want state %s", ra, want)
		}
	}
	asgs, err := s.ListAssignments(ctx, "p")
	must(t, err)
	if len(asgs) != n {
		t.Fatalf("%d assignments, want %d", len(asgs), n)
	}
	for _, a := range asgs {
		want := cv.Hash
		if a.AgentID == "a00003" {
			want = "later"
		}
		if a.ConfigHash != want {
			t.Fatalf("assignment %+v: want hash %s", a, want)
		}
	}
}

func testRollouts(t *testing.T, s store.Store) {
	ctx := t.Context()
	cv := &store.ConfigVersion{ID: "caa", ProjectID: "p", Hash: "aa", YAML: "x", CreatedAt: Now}
	must(t, s.CreateConfigVersion(ctx, cv))
	r := Rollout("r1", "p", cv)
	ras := []*store.RolloutAgent{
		{RolloutID: "r1", AgentID: "a2", Stage: 1, State: "waiting", UpdatedAt: Now},
		{RolloutID: "r1", AgentID: "a1", Stage: 0, State: "waiting", UpdatedAt: Now},
	}
	must(t, s.CreateRollout(ctx, r, ras))
	if r.RowVersion != 1 {
		t.Errorf("created rollout version %d, want 1", r.RowVersion)
	}
	wantErr(t, "duplicate rollout", s.CreateRollout(ctx, Rollout("r1", "p", cv), nil), store.ErrConflict)
	got, err := s.RolloutByID(ctx, "r1")
	must(t, err)
	if diff := cmp.Diff(r, got); diff != "" {
		t.Errorf("RolloutByID (-want +got):\n%s", diff)
	}
	_, err = s.RolloutByID(ctx, "nope")
	wantErr(t, "unknown rollout", err, store.ErrNotFound)
	gotRas, err := s.ListRolloutAgents(ctx, "r1")
	must(t, err)
	if diff := cmp.Diff([]*store.RolloutAgent{ras[1], ras[0]}, gotRas); diff != "" {
		t.Errorf("ListRolloutAgents by stage (-want +got):\n%s", diff)
	}

	// One step: the rollout row, its agents and the assignments together.
	stale := *r
	next := *r
	started := Now.Add(time.Second)
	next.Status, next.Stage, next.StageStartedAt, next.UpdatedAt = "running", 0, &started, started
	ch := &store.RolloutChange{
		Rollout: &next,
		Agents:  []*store.RolloutAgent{{RolloutID: "r1", AgentID: "a1", Stage: 0, State: "assigned", UpdatedAt: started}},
		Assign:  []*store.Assignment{{AgentID: "a1", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", RolloutID: "r1", UpdatedAt: started}},
	}
	must(t, s.ApplyRolloutChange(ctx, ch))
	if next.RowVersion != 2 {
		t.Errorf("version after a change %d, want 2", next.RowVersion)
	}
	// A change at a stale version writes nothing at all.
	stale.Status = "paused"
	err = s.ApplyRolloutChange(ctx, &store.RolloutChange{Rollout: &stale,
		Agents: []*store.RolloutAgent{{RolloutID: "r1", AgentID: "a2", Stage: 1, State: "assigned", UpdatedAt: started}},
		Assign: []*store.Assignment{{AgentID: "a2", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", UpdatedAt: started}}})
	wantErr(t, "stale rollout change", err, store.ErrConflict)
	if stale.RowVersion != 1 {
		t.Errorf("failed change moved RowVersion to %d", stale.RowVersion)
	}
	_, err = s.AssignmentByAgent(ctx, "a2")
	wantErr(t, "assignment of a stale change", err, store.ErrNotFound)
	gotRas, _ = s.ListRolloutAgents(ctx, "r1")
	if len(gotRas) != 2 || gotRas[0].State != "assigned" || gotRas[1].State != "waiting" {
		t.Errorf("rollout agents after a stale change: %+v", gotRas)
	}
	got, err = s.RolloutByID(ctx, "r1")
	must(t, err)
	if diff := cmp.Diff(&next, got); diff != "" {
		t.Errorf("rollout after the change (-want +got):\n%s", diff)
	}
	// Of two controllers racing from one version, one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 4 {
		c := next
		c.Reason = fmt.Sprint("writer ", i)
		wg.Go(func() {
			if err := s.ApplyRolloutChange(ctx, &store.RolloutChange{Rollout: &c}); err == nil {
				wins.Add(1)
			} else if !errors.Is(err, store.ErrConflict) {
				t.Errorf("racing change: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d racing changes won, want 1", wins.Load())
	}

	// A change without a rollout row, and unassigning.
	must(t, s.ApplyRolloutChange(ctx, &store.RolloutChange{Unassign: []string{"a1"}}))
	_, err = s.AssignmentByAgent(ctx, "a1")
	wantErr(t, "after unassign", err, store.ErrNotFound)

	r2 := Rollout("r2", "q", cv)
	r2.CreatedAt, r2.Status = Now.Add(time.Minute), "completed"
	must(t, s.CreateRollout(ctx, r2, nil))
	for _, tc := range []struct {
		name string
		f    store.RolloutFilter
		want []string
	}{
		{"all, newest first", store.RolloutFilter{}, []string{"r2", "r1"}},
		{"project", store.RolloutFilter{ProjectID: "p"}, []string{"r1"}},
		{"statuses", store.RolloutFilter{Statuses: []string{"completed", "paused"}}, []string{"r2"}},
		{"none", store.RolloutFilter{ProjectID: "p", Statuses: []string{"completed"}}, []string{}},
	} {
		rs, err := s.ListRollouts(ctx, tc.f)
		must(t, err)
		ids := []string{}
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("ListRollouts %s (-want +got):\n%s", tc.name, diff)
		}
	}

	// A rollout created with its first stage started: one change inserts
	// the row, its agents and their assignments; a second creation of the
	// same id writes nothing.
	r3 := Rollout("r3", "p", cv)
	r3.CreatedAt = Now.Add(2 * time.Minute)
	r3.UpdatedAt, r3.Status, r3.Stage, r3.StageStartedAt = r3.CreatedAt, "running", 0, &r3.CreatedAt
	create := &store.RolloutChange{Create: true, Rollout: r3,
		Agents: []*store.RolloutAgent{{RolloutID: "r3", AgentID: "a3", Stage: 0, State: "assigned", UpdatedAt: r3.CreatedAt}},
		Assign: []*store.Assignment{{AgentID: "a3", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", RolloutID: "r3", UpdatedAt: r3.CreatedAt}}}
	must(t, s.ApplyRolloutChange(ctx, create))
	if r3.RowVersion != 1 {
		t.Errorf("rollout created by a change: version %d, want 1", r3.RowVersion)
	}
	got, err = s.RolloutByID(ctx, "r3")
	must(t, err)
	if diff := cmp.Diff(r3, got); diff != "" {
		t.Errorf("rollout created by a change (-want +got):\n%s", diff)
	}
	if asg, err := s.AssignmentByAgent(ctx, "a3"); err != nil || asg.RolloutID != "r3" {
		t.Errorf("assignment of the creating change: %+v, %v", asg, err)
	}
	if err := s.ApplyRolloutChange(ctx, &store.RolloutChange{Create: true}); err == nil || errors.Is(err, store.ErrConflict) {
		t.Errorf("a creating change without a rollout: %v, want an error of its own", err)
	}
	again := *r3
	err = s.ApplyRolloutChange(ctx, &store.RolloutChange{Create: true, Rollout: &again,
		Assign: []*store.Assignment{{AgentID: "a4", ProjectID: "p", ConfigID: "caa", ConfigHash: "aa", RolloutID: "r3", UpdatedAt: r3.CreatedAt}}})
	wantErr(t, "creating change of an existing rollout", err, store.ErrConflict)
	_, err = s.AssignmentByAgent(ctx, "a4")
	wantErr(t, "assignment of a failed creating change", err, store.ErrNotFound)

}

func testUsers(t *testing.T, s store.Store) {
	us, ok := s.(store.Users)
	if !ok {
		t.Fatalf("%T does not implement store.Users: every fleet store must (console users are fleet state)", s)
	}
	ctx := t.Context()
	org := &store.Org{ID: "o1", Name: "acme", CreatedAt: Now}
	must(t, us.CreateOrg(ctx, org))
	wantErr(t, "duplicate org name", us.CreateOrg(ctx, &store.Org{ID: "o2", Name: "acme", CreatedAt: Now}), store.ErrConflict)
	if got, err := us.OrgByID(ctx, "o1"); err != nil || !cmp.Equal(org, got) {
		t.Errorf("OrgByID: %+v, %v", got, err)
	}
	_, err := us.OrgByID(ctx, "nope")
	wantErr(t, "unknown org", err, store.ErrNotFound)
	must(t, s.CreateProject(ctx, Project("p1")))
	wantErr(t, "project into unknown org", us.SetProjectOrg(ctx, "p1", "nope"), store.ErrNotFound)
	wantErr(t, "unknown project into org", us.SetProjectOrg(ctx, "nope", "o1"), store.ErrNotFound)
	must(t, us.SetProjectOrg(ctx, "p1", "o1"))
	must(t, us.CreateOrg(ctx, &store.Org{ID: "o3", Name: "beta", CreatedAt: Now.Add(time.Second)}))
	must(t, us.SetProjectOrg(ctx, "p1", "o3"))
	if m, err := us.ProjectOrgs(ctx); err != nil || !cmp.Equal(map[string]string{"p1": "o3"}, m) {
		t.Errorf("ProjectOrgs after a move: %v, %v", m, err)
	}
	if os, err := us.ListOrgs(ctx); err != nil || len(os) != 2 || os[0].ID != "o1" {
		t.Errorf("ListOrgs: %v, %v", os, err)
	}

	login := Now.Add(time.Minute)
	u := &store.User{ID: "u1", Name: "vera", KeyHash: "h1", ReadOnly: true, CreatedBy: "root", CreatedAt: Now}
	must(t, us.CreateUser(ctx, u))
	wantErr(t, "duplicate user name", us.CreateUser(ctx, &store.User{ID: "u2", Name: "vera", KeyHash: "h2", CreatedAt: Now}), store.ErrConflict)
	must(t, us.CreateUser(ctx, &store.User{ID: "u3", Name: "ann", KeyHash: "h3", FleetAdmin: true, CreatedAt: Now}))
	must(t, us.TouchUser(ctx, "u1", login))
	u.LastLoginAt = &login
	got, err := us.UserByKeyHash(ctx, "h1")
	must(t, err)
	if diff := cmp.Diff(u, got); diff != "" {
		t.Errorf("UserByKeyHash (-want +got):\n%s", diff)
	}
	if got, err := us.UserByID(ctx, "u3"); err != nil || !got.FleetAdmin {
		t.Errorf("UserByID: %+v, %v", got, err)
	}
	_, err = us.UserByKeyHash(ctx, "nope")
	wantErr(t, "unknown key", err, store.ErrNotFound)
	if list, err := us.ListUsers(ctx); err != nil || len(list) != 2 || list[0].Name != "ann" {
		t.Errorf("ListUsers by name: %v, %v", list, err)
	}

	wantErr(t, "membership of unknown user", us.SetMembership(ctx, store.Membership{UserID: "nope", OrgID: "o1", Role: store.RoleViewer}), store.ErrNotFound)
	must(t, us.SetMembership(ctx, store.Membership{UserID: "u1", OrgID: "o1", Role: store.RoleViewer}))
	must(t, us.SetMembership(ctx, store.Membership{UserID: "u1", OrgID: "o1", Role: store.RoleEditor}))
	must(t, us.SetMembership(ctx, store.Membership{UserID: "u3", OrgID: "o3", Role: store.RoleAdmin}))
	must(t, us.SetMembership(ctx, store.Membership{UserID: "u3", OrgID: "o1", Role: store.RoleViewer}))
	must(t, us.SetMembership(ctx, store.Membership{UserID: "u3", OrgID: "o1", Role: store.RoleNone}))
	ms, err := us.Memberships(ctx, "")
	must(t, err)
	if diff := cmp.Diff([]store.Membership{{UserID: "u1", OrgID: "o1", Role: store.RoleEditor}, {UserID: "u3", OrgID: "o3", Role: store.RoleAdmin}}, ms); diff != "" {
		t.Errorf("Memberships (-want +got):\n%s", diff)
	}

	se := &store.Session{ID: "s1", CSRF: "c", Kind: "user", Subject: "u1", Name: "vera", CreatedAt: Now, ExpiresAt: Now.Add(time.Hour)}
	must(t, us.CreateSession(ctx, se))
	wantErr(t, "duplicate session", us.CreateSession(ctx, se), store.ErrConflict)
	got2, err := us.SessionByID(ctx, "s1", Now)
	must(t, err)
	if diff := cmp.Diff(se, got2); diff != "" {
		t.Errorf("SessionByID (-want +got):\n%s", diff)
	}
	_, err = us.SessionByID(ctx, "s1", Now.Add(2*time.Hour))
	wantErr(t, "expired session", err, store.ErrNotFound)
	must(t, us.CreateSession(ctx, &store.Session{ID: "s2", CSRF: "c", Kind: "token", Subject: "t1", Name: "admin", CreatedAt: Now, ExpiresAt: Now.Add(time.Hour)}))
	must(t, us.DeleteSession(ctx, "s2"))
	_, err = us.SessionByID(ctx, "s2", Now)
	wantErr(t, "deleted session", err, store.ErrNotFound)

	// Deleting a user removes its memberships and sessions.
	must(t, us.DeleteUser(ctx, "u1"))
	wantErr(t, "deleting twice", us.DeleteUser(ctx, "u1"), store.ErrNotFound)
	_, err = us.SessionByID(ctx, "s1", Now)
	wantErr(t, "session of a deleted user", err, store.ErrNotFound)
	if ms, _ := us.Memberships(ctx, "u1"); len(ms) != 0 {
		t.Errorf("memberships left: %v", ms)
	}
}
