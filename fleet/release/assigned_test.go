package release

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
	"unique"

	"github.com/google/go-cmp/cmp"
	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
)

// countingStore counts the release assignment reads per agent.
type countingStore struct {
	*sqlite.Store
	mu    sync.Mutex
	reads map[string]int
}

func (s *countingStore) ReleaseAssignmentByAgent(ctx context.Context, agentID string) (*store.ReleaseAssignment, error) {
	s.mu.Lock()
	s.reads[agentID]++
	s.mu.Unlock()
	return s.Store.ReleaseAssignmentByAgent(ctx, agentID)
}

func (s *countingStore) readsOf(ids ...string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, id := range ids {
		if n := s.reads[id]; n > 0 {
			out[id] = n
		}
	}
	return out
}

// offers is a Pusher that records the release versions offered.
type offers struct {
	mu        sync.Mutex
	connected []string
	ch        chan [2]string // agent id, version
}

func (p *offers) Send(_ context.Context, agentID string, msg *protobufs.ServerToAgent) error {
	p.ch <- [2]string{agentID, msg.GetPackagesAvailable().GetPackages()[""].GetVersion()}
	return nil
}

func (p *offers) Connected() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.connected...)
}

// next waits for the next offer and checks it is version for agent.
func (p *offers) next(t *testing.T, agent, version string) {
	t.Helper()
	select {
	case got := <-p.ch:
		if got != [2]string{agent, version} {
			t.Fatalf("offered %v, want %s to %s", got, version, agent)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no offer of %s to %s", version, agent)
	}
}

// none checks that nothing is offered for a while.
func (p *offers) none(t *testing.T) {
	t.Helper()
	select {
	case got := <-p.ch:
		t.Fatalf("unexpected offer %v", got)
	case <-time.After(200 * time.Millisecond):
	}
}

type fixture struct {
	st  *countingStore
	m   *Manager
	p   *offers
	prj string
}

// newFixture opens a store with one project and release v2, and a
// manager (not running) over it.
func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	sq, err := sqlite.Open(t.Context(), filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sq.Close() })
	f := &fixture{st: &countingStore{Store: sq, reads: map[string]int{}}, p: &offers{ch: make(chan [2]string, 100)}, prj: "prj1"}
	if err := sq.CreateProject(t.Context(), &store.Project{ID: f.prj, Name: "one", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	o.Store, o.DataDir, o.FleetURL = f.st, dir, "http://fleet.test:8080"
	if f.m, err = New(o); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Upload(t.Context(), "v2", "", bytes.NewReader([]byte("agent v2")), "admin"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) run(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.m.Run(ctx, f.p) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

// agent creates a connected agent running version.
func (f *fixture) agent(t *testing.T, id, version string) *store.Agent {
	t.Helper()
	a := &store.Agent{ID: id, ProjectID: f.prj, Hostname: id, Platform: "host", Version: version, Connected: true, Healthy: true}
	if err := f.st.UpsertAgent(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	return a
}

// assignElsewhere writes a release assignment as another replica does:
// straight to the store, without this manager knowing.
func (f *fixture) assignElsewhere(t *testing.T, id, version string) {
	t.Helper()
	if err := f.st.ApplyReleaseRolloutChange(t.Context(), &store.ReleaseRolloutChange{Assign: []*store.ReleaseAssignment{
		{AgentID: id, ProjectID: f.prj, Version: version, UpdatedAt: time.Now()},
	}}); err != nil {
		t.Fatal(err)
	}
}

// drained waits until the manager has taken every queued check and then
// until it has finished them: barrier's report (an agent assigned a
// version it does not run) is queued after, so its offer comes after.
func (f *fixture) drained(t *testing.T, barrier *store.Agent, version string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.m.qmu.Lock()
		n := len(f.m.queue)
		f.m.qmu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d checks still queued", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.m.pushedReset(barrier.ID)
	f.m.OnAgentStatus(barrier)
	f.p.next(t, barrier.ID, version)
}

// pushedReset forgets the last offer to an agent, so that it is offered
// again at once.
func (m *Manager) pushedReset(id string) {
	m.qmu.Lock()
	delete(m.pushed, id)
	m.qmu.Unlock()
}

// Status reports of agents without a release assignment, or running the
// version they are assigned, read nothing from the store (a config push
// to a 19,000-agent fleet is 19,000 reports or more); an agent assigned another
// version than it runs still gets its offer, and so does an agent whose
// assignment another replica changed (AssignmentChanged).
func TestStatusReportsSkipStoreReads(t *testing.T) {
	f := newFixture(t, Options{})
	const n = 200
	var plain []*store.Agent
	var plainIDs []string
	for i := range n {
		a := f.agent(t, fmt.Sprintf("agent-%03d", i), "v1")
		plain = append(plain, a)
		plainIDs = append(plainIDs, a.ID)
	}
	x := f.agent(t, "assigned-x", "v1")
	barrier := f.agent(t, "assigned-barrier", "v1")
	f.assignElsewhere(t, x.ID, "v2")
	f.assignElsewhere(t, barrier.ID, "v2")

	// Reports queued before Run are checked after its first listing.
	for _, a := range plain {
		f.m.OnAgentStatus(a)
	}
	f.m.OnAgentStatus(x)
	f.run(t)
	f.p.next(t, x.ID, "v2")

	// A config push: APPLYING then APPLIED from every agent, x now
	// running v2.
	up := *x
	up.Version = "v2"
	for _, status := range []string{"APPLYING", "APPLIED"} {
		for _, a := range plain {
			c := *a
			c.ConfigStatus = status
			f.m.OnAgentStatus(&c)
		}
		f.m.OnAgentStatus(&up)
	}
	f.drained(t, barrier, "v2")
	if diff := cmp.Diff(map[string]int{}, f.st.readsOf(plainIDs...)); diff != "" {
		t.Errorf("assignment reads of agents without one (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{x.ID: 1, barrier.ID: 1}, f.st.readsOf(x.ID, barrier.ID)); diff != "" {
		t.Errorf("assignment reads of assigned agents (-want +got):\n%s", diff)
	}

	// Another replica assigns v2 to plain[0]: its reports alone are not
	// read (nothing told this replica), the notification is.
	f.assignElsewhere(t, plain[0].ID, "v2")
	f.m.OnAgentStatus(plain[0])
	f.drained(t, barrier, "v2")
	if got := f.st.readsOf(plain[0].ID); len(got) != 0 {
		t.Errorf("assignment reads of a report with no known assignment = %v, want none", got)
	}
	f.m.AssignmentChanged(plain[0])
	f.p.next(t, plain[0].ID, "v2")
	// Now remembered: once it runs v2, its reports are not read.
	c := *plain[0]
	c.Version = "v2"
	f.m.OnAgentStatus(&c)
	f.drained(t, barrier, "v2")
	if diff := cmp.Diff(map[string]int{plain[0].ID: 1}, f.st.readsOf(plain[0].ID)); diff != "" {
		t.Errorf("assignment reads after AssignmentChanged (-want +got):\n%s", diff)
	}
	f.p.none(t)
}

// An assignment written by another replica reaches a connected agent
// without any notification by the periodic listing; the manager's own
// writes (stage start, rollback) keep its memory current.
func TestResyncAndOwnWrites(t *testing.T) {
	f := newFixture(t, Options{Resync: 100 * time.Millisecond, Tick: 20 * time.Millisecond, AgentTimeout: time.Hour})
	z := f.agent(t, "agent-z", "v1")
	w := f.agent(t, "agent-w", "v1")
	f.p.connected = []string{z.ID, w.ID}
	f.run(t)
	f.p.none(t)

	f.assignElsewhere(t, z.ID, "v2")
	f.p.next(t, z.ID, "v2")

	// A rollout started here assigns and offers v2 to w at once.
	w.Labels = map[string]string{"role": "w"}
	if err := f.st.UpsertAgent(t.Context(), w); err != nil {
		t.Fatal(err)
	}
	st, err := f.m.StartRollout(t.Context(), RolloutRequest{ProjectID: f.prj, Version: "v2", Selector: "role=w", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	f.p.next(t, w.ID, "v2")
	if v, known := f.m.asg.lookup(w.ID); !known || v != "v2" {
		t.Errorf("memory of w after the stage start = %q, %v; want v2", v, known)
	}
	// Rolled back: v1 is not a release the fleet has, so w is no longer
	// assigned anything, and its reports are not read.
	if _, err := f.m.Rollback(t.Context(), st.ID, "admin"); err != nil {
		t.Fatal(err)
	}
	if v, known := f.m.asg.lookup(w.ID); !known || v != "" {
		t.Errorf("memory of w after the rollback = %q, %v; want none", v, known)
	}
	barrier := f.agent(t, "barrier", "v1")
	f.assignElsewhere(t, barrier.ID, "v2")
	f.m.AssignmentChanged(barrier)
	f.p.next(t, barrier.ID, "v2")
	f.drained(t, barrier, "v2") // the rollback's own check of w is done
	before := f.st.readsOf(w.ID)[w.ID]
	f.m.OnAgentStatus(w)
	f.drained(t, barrier, "v2")
	if after := f.st.readsOf(w.ID)[w.ID]; after != before {
		t.Errorf("reports of w after the rollback read its assignment %d times, want 0", after-before)
	}
}

func TestAssignedReplaceKeepsWritesDuringListing(t *testing.T) {
	var c assigned
	if _, known := c.lookup("a"); known {
		t.Fatal("known before the first listing")
	}
	c.begin()
	c.set("a", "v3") // written while the listing read v2 for a
	c.drop("b")      // removed while the listing read v2 for b
	listed := map[string]string{"a": "v2", "b": "v2", "c": "v2"}
	all := map[string]unique.Handle[string]{}
	for id, v := range listed {
		all[id] = unique.Make(v)
	}
	changed, dropped := c.replace(all)
	got := map[string]string{}
	for _, id := range []string{"a", "b", "c", "d"} {
		v, known := c.lookup(id)
		if !known {
			t.Fatalf("%s unknown after the listing", id)
		}
		got[id] = v
	}
	if diff := cmp.Diff(map[string]string{"a": "v3", "b": "", "c": "v2", "d": ""}, got); diff != "" {
		t.Errorf("memory (-want +got):\n%s", diff)
	}
	if len(changed) != 2 || len(dropped) != 0 {
		t.Errorf("changed %v, dropped %v; want a and c changed, none dropped", changed, dropped)
	}
	changed, dropped = c.replace(map[string]unique.Handle[string]{"a": unique.Make("v3")})
	if len(changed) != 0 || !cmp.Equal(dropped, []string{"c"}) {
		t.Errorf("second listing: changed %v, dropped %v; want none changed, c dropped", changed, dropped)
	}
}

// TestChecksRunInIDOrder: queued checks run, and their offers go out, in
// the order of the agents' ids (they went in a map's order), so with
// time-ordered ids the store reads and writes that follow go in the
// order of its rows.
func TestChecksRunInIDOrder(t *testing.T) {
	f := newFixture(t, Options{})
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("agent-%03d", i))
	}
	shuffled := slices.Clone(ids)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, id := range shuffled {
		f.agent(t, id, "v1")
		f.assignElsewhere(t, id, "v2")
	}
	// Queued before Run, so that one batch holds them all.
	f.m.enqueue(shuffled...)
	f.run(t)
	var got []string
	for range ids {
		select {
		case o := <-f.p.ch:
			got = append(got, o[0])
		case <-time.After(10 * time.Second):
			t.Fatalf("offers so far %v, want one to each of %d agents", got, len(ids))
		}
	}
	if !slices.Equal(got, ids) {
		t.Errorf("offers went out in the order\n%v\nwant the ids' order", got)
	}
}
