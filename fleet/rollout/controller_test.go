package rollout

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/config"
)

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		n, canary, pct, count int
		want                  []int
	}{
		{n: 0, canary: 1, want: nil},
		{n: 5, want: []int{5}},
		{n: 5, canary: 1, want: []int{1, 4}},
		{n: 5, canary: 1, count: 2, want: []int{1, 2, 2}},
		{n: 10, canary: 2, pct: 30, want: []int{2, 3, 3, 2}},
		{n: 3, canary: 5, want: []int{3}},
		{n: 7, pct: 50, want: []int{4, 3}},
		{n: 1000, canary: 10, pct: 100, want: []int{10, 990}},
		{n: 4, pct: 1, want: []int{1, 1, 1, 1}},
	} {
		got := Plan(tc.n, tc.canary, tc.pct, tc.count)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Plan(%d, canary %d, %d%%, count %d) (-want +got):\n%s", tc.n, tc.canary, tc.pct, tc.count, diff)
		}
	}
}

func TestWins(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	general := &store.Rollout{ID: "a", Specificity: 1, CreatedAt: t0.Add(time.Hour)}
	specific := &store.Rollout{ID: "b", Specificity: 2, CreatedAt: t0}
	newer := &store.Rollout{ID: "c", Specificity: 1, CreatedAt: t0.Add(2 * time.Hour)}
	if !Wins(specific, general) || Wins(general, specific) {
		t.Error("the more specific selector must win even when older")
	}
	if !Wins(newer, general) || Wins(general, newer) {
		t.Error("at equal specificity the newer rollout must win")
	}
}

// fleet is a fake fleet of agents: Send makes the agent report the
// pushed hash as APPLIED, or FAILED when its id is in fail: the record is
// written, then onStatus told, as fleet/opamp does (unless bare).
type fleet struct {
	t    *testing.T
	st   store.Store
	mu   sync.Mutex
	sent map[string][]string // agent → hashes pushed
	// order is every agent pushed, in the order of the pushes.
	order []string
	fail  map[string]bool
	mute  map[string]bool // agents that never answer
	bare  bool            // write reports without telling onStatus
	// onStatus is the controller's OnAgentStatus.
	onStatus func(a *store.Agent)
}

func (f *fleet) Send(ctx context.Context, id string, msg *protobufs.ServerToAgent) error {
	h := hex.EncodeToString(msg.RemoteConfig.ConfigHash)
	f.mu.Lock()
	f.sent[id] = append(f.sent[id], h)
	f.order = append(f.order, id)
	fail, mute := f.fail[id], f.mute[id]
	f.mu.Unlock()
	if mute {
		return nil
	}
	a, err := f.st.AgentByID(ctx, id)
	if err != nil {
		return err
	}
	a.ConfigHash, a.ConfigStatus, a.ConfigError = h, "APPLIED", ""
	if fail {
		a.ConfigStatus, a.ConfigError = "FAILED", "boom"
	}
	if err := f.st.UpsertAgent(ctx, a); err != nil {
		return err
	}
	f.mu.Lock()
	bare, onStatus := f.bare, f.onStatus
	f.mu.Unlock()
	if !bare && onStatus != nil {
		onStatus(a)
	}
	return nil
}

func (f *fleet) Connected() []string { return nil }

func (f *fleet) pushes(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sent[id]...)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type env struct {
	t     *testing.T
	st    *sqlite.Store
	clk   *clock
	fl    *fleet
	c     *Controller
	proj  string
	files string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{t: t, st: st, clk: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, proj: "p1", files: dir}
	e.fl = &fleet{t: t, st: st, sent: map[string][]string{}, fail: map[string]bool{}, mute: map[string]bool{}}
	if err := st.CreateProject(t.Context(), &store.Project{ID: e.proj, Name: "p", CreatedAt: e.clk.now()}); err != nil {
		t.Fatal(err)
	}
	e.restart()
	return e
}

// restart replaces the controller, as a fleet restart does.
func (e *env) restart() {
	c, err := New(Options{Store: e.st, Now: e.clk.now, AgentTimeout: time.Minute, PushRetry: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	c.pusher = e.fl
	e.c = c
	e.fl.mu.Lock()
	e.fl.onStatus = c.OnAgentStatus
	e.fl.mu.Unlock()
}

func (e *env) agent(id string, labels map[string]string) {
	e.t.Helper()
	a := &store.Agent{ID: id, ProjectID: e.proj, Labels: labels, Connected: true, Healthy: true}
	if err := e.st.UpsertAgent(e.t.Context(), a); err != nil {
		e.t.Fatal(err)
	}
}

// step runs one controller step and delivers the pushes it queued.
func (e *env) step() {
	e.c.Step(e.t.Context())
	e.deliver()
}

// deliver delivers the queued pushes (and those their reports queue).
func (e *env) deliver() {
	ctx := e.t.Context()
	for range 3 {
		q := e.c.takeQueue()
		if len(q) == 0 {
			return
		}
		for _, j := range q {
			e.c.reconcile(ctx, j.id, j.agent, j.full, j.asg)
		}
	}
}

func (e *env) apply(yaml, sel string, canary, waveCount int, pause time.Duration, maxFail int) *store.Rollout {
	e.t.Helper()
	r, _, err := e.c.Apply(e.t.Context(), ApplyRequest{ProjectID: e.proj, YAML: []byte(yaml), Selector: sel, Canary: canary, WaveCount: waveCount, WavePause: pause, MaxFailurePercent: maxFail, Actor: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) status(id string) *Status {
	e.t.Helper()
	st, err := e.c.Get(e.t.Context(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *env) states(id string) map[string]string {
	out := map[string]string{}
	for _, a := range e.status(id).Agents {
		out[a.AgentID] = a.State
	}
	return out
}

func (e *env) assigned(id string) string {
	a, err := e.st.AssignmentByAgent(e.t.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return ""
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return a.ConfigHash
}

func systemd(n int) map[string]string {
	return map[string]string{"platform": "systemd", "node": fmt.Sprint(n)}
}

func TestStagesWithWavePauses(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	e.agent("k0", map[string]string{"platform": "kubernetes"})
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 1, 2, 30*time.Second, 0)
	if diff := cmp.Diff([]int{1, 2, 2}, e.status(r.ID).StageSizes); diff != "" {
		t.Fatalf("stage sizes (-want +got):\n%s", diff)
	}

	e.step() // canary assigned, pushed, applied
	e.step() // canary evaluated: pause starts
	st := e.status(r.ID)
	if st.Status != StatusRunning || st.Stage != 0 || st.NextStageAt == nil || !st.NextStageAt.Equal(e.clk.now().Add(30*time.Second)) {
		t.Fatalf("after canary: status %s stage %d next %v, want running, stage 0, next in 30s", st.Status, st.Stage, st.NextStageAt)
	}
	want := map[string]string{"s0": AgentApplied, "s1": AgentWaiting, "s2": AgentWaiting, "s3": AgentWaiting, "s4": AgentWaiting}
	if diff := cmp.Diff(want, e.states(r.ID)); diff != "" {
		t.Fatalf("after canary (-want +got):\n%s", diff)
	}

	e.clk.add(29 * time.Second)
	e.step()
	if got := e.fl.pushes("s1"); len(got) != 0 {
		t.Fatalf("wave 1 pushed during the pause: %v", got)
	}
	// A host that enrolls while the rollout runs is in none of its
	// stages: completing the rollout assigns it the config.
	e.agent("s8", systemd(8))
	e.clk.add(time.Second)
	e.step()
	e.step()
	want["s1"], want["s2"] = AgentApplied, AgentApplied
	if diff := cmp.Diff(want, e.states(r.ID)); diff != "" {
		t.Fatalf("after wave 1 (-want +got):\n%s", diff)
	}
	e.clk.add(30 * time.Second)
	e.step()
	e.step()
	st = e.status(r.ID)
	if st.Status != StatusCompleted {
		t.Fatalf("status %s (%s), want completed", st.Status, st.Reason)
	}
	for i := range 5 {
		id := fmt.Sprintf("s%d", i)
		if got := e.fl.pushes(id); len(got) != 1 || got[0] != r.ConfigHash {
			t.Errorf("%s got pushes %v, want exactly the new hash once", id, got)
		}
	}
	if got := e.fl.pushes("k0"); len(got) != 0 {
		t.Errorf("kubernetes agent got %v, want nothing", got)
	}
	if got := e.assigned("s8"); got != r.ConfigHash {
		t.Errorf("agent enrolled during the rollout is assigned %q, want the rollout's config", got)
	}
	if got := e.assigned("k0"); got != "" {
		t.Errorf("kubernetes agent is assigned %q, want nothing", got)
	}

	// A host that enrolls later gets the config of its selector.
	e.agent("s9", systemd(9))
	e.c.OnAgentStatus(&store.Agent{ID: "s9", ProjectID: e.proj, Labels: systemd(9), Connected: true})
	e.step()
	if got := e.fl.pushes("s9"); len(got) != 1 || got[0] != r.ConfigHash {
		t.Errorf("late agent got %v, want the completed rollout's config", got)
	}
}

func TestCanaryFailureHaltsAndRollbackRestores(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	v1 := e.apply("sampling: {frequency_hz: 29}\n", "platform=systemd", 0, 0, 0, 0)
	e.step()
	e.step()
	if st := e.status(v1.ID); st.Status != StatusCompleted {
		t.Fatalf("v1: %s (%s)", st.Status, st.Reason)
	}
	e.fl.fail["s0"] = true
	v2 := e.apply("sampling: {frequency_hz: 99}\n", "platform=systemd", 1, 0, 0, 0)
	for range 3 {
		e.step()
	}
	st := e.status(v2.ID)
	if st.Status != StatusHalted || !strings.Contains(st.Reason, "canary failed") || !strings.Contains(st.Reason, "boom") {
		t.Fatalf("v2: status %s reason %q, want halted naming the canary and the agent's error", st.Status, st.Reason)
	}
	for _, id := range []string{"s1", "s2"} {
		if got := e.assigned(id); got != v1.ConfigHash {
			t.Errorf("%s assigned %s after the halt, want v1 (no wave may start)", id, got)
		}
		if n := len(e.fl.pushes(id)); n != 1 {
			t.Errorf("%s got %d pushes, want 1 (v1 only)", id, n)
		}
	}
	e.clk.add(time.Hour)
	e.step()
	if st := e.status(v2.ID); st.Status != StatusHalted {
		t.Fatalf("halted rollout moved on to %s", st.Status)
	}

	if _, err := e.c.Rollback(t.Context(), v2.ID, "test"); err != nil {
		t.Fatal(err)
	}
	e.step()
	for _, id := range []string{"s0", "s1", "s2"} {
		if got := e.assigned(id); got != v1.ConfigHash {
			t.Errorf("%s assigned %s after rollback, want v1", id, got)
		}
	}
	if got := e.fl.pushes("s0"); len(got) != 3 || got[2] != v1.ConfigHash {
		t.Errorf("s0 pushes %v, want v1, v2, v1", got)
	}
	if _, err := e.c.Rollback(t.Context(), v2.ID, "test"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second rollback: %v, want ErrConflict", err)
	}
}

func TestSilentAgentTimesOut(t *testing.T) {
	e := newEnv(t)
	e.agent("s0", systemd(0))
	e.agent("s1", systemd(1))
	e.fl.mute["s0"] = true
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 1, 0, 0, 0)
	e.step()
	e.clk.add(59 * time.Second)
	e.step()
	if st := e.status(r.ID); st.Status != StatusRunning {
		t.Fatalf("status %s before the timeout", st.Status)
	}
	e.clk.add(time.Second)
	e.step()
	st := e.status(r.ID)
	if st.Status != StatusHalted || !strings.Contains(st.Reason, "did not report") {
		t.Fatalf("status %s reason %q, want halted for the silent canary", st.Status, st.Reason)
	}
}

func TestRestartResumesDuringPause(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 1, 1, time.Minute, 0)
	e.step()
	e.step()
	e.restart()
	e.clk.add(time.Minute)
	e.step()
	e.step()
	if got := e.states(r.ID); got["s1"] != AgentApplied || got["s2"] != AgentWaiting {
		t.Fatalf("after restart and one pause: %v", got)
	}
	e.restart()
	e.clk.add(time.Minute)
	e.step()
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Fatalf("status %s, want completed", st.Status)
	}
}

func TestPauseResume(t *testing.T) {
	e := newEnv(t)
	for i := range 2 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	r := e.apply("sampling: {frequency_hz: 49}\n", "", 1, 0, 0, 0)
	e.step()
	if _, err := e.c.Pause(t.Context(), r.ID, "op"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.step()
	}
	if got := e.states(r.ID)["s1"]; got != AgentWaiting {
		t.Fatalf("paused rollout started wave 1: s1 is %s", got)
	}
	if _, err := e.c.Resume(t.Context(), r.ID, "op"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.step()
	}
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Fatalf("status %s, want completed", st.Status)
	}
	if _, err := e.c.Pause(t.Context(), r.ID, "op"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("pausing a completed rollout: %v, want ErrConflict", err)
	}
}

func TestMostSpecificSelectorWins(t *testing.T) {
	e := newEnv(t)
	east := map[string]string{"platform": "systemd", "cluster": "east"}
	e.agent("e0", east)
	e.agent("w0", map[string]string{"platform": "systemd", "cluster": "west"})
	specific := e.apply("sampling: {frequency_hz: 11}\n", "platform=systemd,cluster=east", 0, 0, 0, 0)
	e.step()
	e.step()
	e.clk.add(time.Second)
	general := e.apply("sampling: {frequency_hz: 22}\n", "platform=systemd", 0, 0, 0, 0)
	e.step()
	e.step()
	if got := e.assigned("e0"); got != specific.ConfigHash {
		t.Errorf("east agent assigned %s, want the more specific (older) config", got)
	}
	if got := e.assigned("w0"); got != general.ConfigHash {
		t.Errorf("west agent assigned %s, want the general config", got)
	}
	// A new east host resolves the same way.
	e.agent("e1", east)
	e.c.OnAgentStatus(&store.Agent{ID: "e1", ProjectID: e.proj, Labels: east, Connected: true})
	e.step()
	if got := e.assigned("e1"); got != specific.ConfigHash {
		t.Errorf("new east agent assigned %s, want the more specific config", got)
	}
}

func TestApplyRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, yaml, sel, want string
	}{
		{"syntax", "sampling: [\n", "", "invalid config syntax"},
		{"unknown field", "sampling: {frequncy_hz: 5}\n", "", "frequncy_hz"},
		{"range", "sampling: {frequency_hz: 5000}\n", "", "sampling.frequency_hz"},
		{"selector", "", "platform in (", "selector"},
	} {
		_, _, err := e.c.Apply(t.Context(), ApplyRequest{ProjectID: e.proj, YAML: []byte(tc.yaml), Selector: tc.sel})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalid naming %q", tc.name, err, tc.want)
		}
	}
	if rs, _ := e.st.ListRollouts(t.Context(), store.RolloutFilter{}); len(rs) != 0 {
		t.Errorf("%d rollouts stored from bad input", len(rs))
	}
	if cs, _ := e.st.ListConfigVersions(t.Context(), e.proj); len(cs) != 0 {
		t.Errorf("%d config versions stored from bad input", len(cs))
	}
}

// A report of the config last pushed to an agent needs no assignment read
// (a push to 19,000 agents is 19,000 reports or more); an assignment changed
// elsewhere arrives with AssignmentChanged, which reads it and pushes.
func TestReportOfPushedConfigSkipsAssignmentRead(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.agent("s0", systemd(0))
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 1, 0, 0)
	e.step()
	e.step()
	if got := e.fl.pushes("s0"); len(got) != 1 || got[0] != r.ConfigHash {
		t.Fatalf("pushes %v, want the rollout's config once", got)
	}
	// Another replica (the leader) assigns another config.
	other := &store.ConfigVersion{ID: "other", ProjectID: e.proj, Hash: strings.Repeat("ab", 32), YAML: "sampling: {frequency_hz: 99}\n", CreatedAt: e.clk.now()}
	if err := e.st.CreateConfigVersion(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetAssignments(ctx, []*store.Assignment{{AgentID: "s0", ProjectID: e.proj, ConfigID: other.ID, ConfigHash: other.Hash, UpdatedAt: e.clk.now()}}); err != nil {
		t.Fatal(err)
	}
	a, err := e.st.AgentByID(ctx, "s0")
	if err != nil || a.ConfigHash != r.ConfigHash || a.ConfigStatus != "APPLIED" {
		t.Fatalf("agent %+v, %v: want APPLIED of the rollout's config", a, err)
	}
	e.c.OnAgentStatus(a)
	e.step()
	if got := e.fl.pushes("s0"); len(got) != 1 {
		t.Fatalf("a report of the pushed config led to pushes %v: the assignment was read", got)
	}
	e.c.AssignmentChanged(a)
	e.step()
	if got := e.fl.pushes("s0"); len(got) != 2 || got[1] != other.Hash {
		t.Fatalf("after AssignmentChanged: pushes %v, want the other config", got)
	}
}

// readCounter counts the store reads a rollout step may avoid.
type readCounter struct {
	store.Store
	mu                  sync.Mutex
	listAgents, listRAs int
}

func (r *readCounter) ListAgents(ctx context.Context, f store.AgentFilter) ([]*store.Agent, error) {
	r.mu.Lock()
	r.listAgents++
	r.mu.Unlock()
	return r.Store.ListAgents(ctx, f)
}

func (r *readCounter) ListRolloutAgents(ctx context.Context, id string) ([]*store.RolloutAgent, error) {
	r.mu.Lock()
	r.listRAs++
	r.mu.Unlock()
	return r.Store.ListRolloutAgents(ctx, id)
}

func (r *readCounter) reads() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listAgents, r.listRAs
}

// TestStepsSettleFromReports: the steps of a running stage settle the
// agents whose reports this replica saw without reading agents or the
// rollout's rows from the store; the stage ends in the step after the
// last report.
func TestStepsSettleFromReports(t *testing.T) {
	e := newEnv(t)
	for i := range 4 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	e.fl.mute["s3"] = true
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.step() // the stage starts; s0..s2 report
	rc := &readCounter{Store: e.st}
	e.c.st = rc
	for range 5 {
		e.clk.add(quietEvery / 10)
		e.step()
	}
	if la, lr := rc.reads(); la != 0 || lr != 0 {
		t.Errorf("5 steps while s3 is silent: %d agent listings, %d rollout row listings; want none", la, lr)
	}
	if diff := cmp.Diff(map[string]string{"s0": AgentApplied, "s1": AgentApplied, "s2": AgentApplied, "s3": AgentAssigned}, e.states(r.ID)); diff != "" {
		t.Errorf("settled from the reports (-want +got):\n%s", diff)
	}
	a, err := e.st.AgentByID(t.Context(), "s3")
	if err != nil {
		t.Fatal(err)
	}
	a.ConfigHash, a.ConfigStatus = r.ConfigHash, "APPLIED"
	if err := e.st.UpsertAgent(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	e.c.OnAgentStatus(a)
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Errorf("after the last report: %s, want completed", st.Status)
	}
}

// TestUnseenReportIsJudged: a report this replica did not see (the agent
// is connected to another replica) is still judged, by the step that
// judges the stage whole once quietEvery passed without progress.
func TestUnseenReportIsJudged(t *testing.T) {
	e := newEnv(t)
	e.agent("s0", systemd(0))
	e.fl.bare = true
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.step()
	e.clk.add(quietEvery / 2)
	e.step()
	if st := e.status(r.ID); st.Status != StatusRunning {
		t.Fatalf("before the full judgement: %s, want running", st.Status)
	}
	e.clk.add(quietEvery / 2)
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Errorf("after quietEvery without progress: %s, want completed", st.Status)
	}
}

// TestReportsHeardDelayTheQuietJudgement: reports of the stage's config
// that this replica hears but that settle nobody yet (an agent still
// applying) count as progress, so no whole-stage judgement reads the
// agents while they arrive; once they stop, quietEvery later, it does.
func TestReportsHeardDelayTheQuietJudgement(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	e.fl.mute["s2"] = true
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.step() // the stage starts; s0 and s1 report
	e.step() // and are settled
	rc := &readCounter{Store: e.st}
	e.c.st = rc
	applying, err := e.st.AgentByID(t.Context(), "s2")
	if err != nil {
		t.Fatal(err)
	}
	applying.ConfigHash, applying.ConfigStatus = r.ConfigHash, "APPLYING"
	for range 6 {
		e.clk.add(quietEvery / 2)
		e.c.OnAgentStatus(applying)
		e.step()
	}
	if la, _ := rc.reads(); la != 0 {
		t.Errorf("3 quiet periods with reports heard: %d agent listings, want none", la)
	}
	e.clk.add(quietEvery)
	e.step()
	if la, _ := rc.reads(); la != 1 {
		t.Errorf("quietEvery after the last report: %d agent listings, want the whole-stage judgement", la)
	}
	if st := e.status(r.ID); st.Status != StatusRunning {
		t.Errorf("rollout %s, want running (s2 still applying)", st.Status)
	}
}

// TestFirstStageStartsWithApply: on the replica that drives rollouts the
// first stage starts in the transaction that creates the rollout, from
// Apply's own listing; a replica that does not drive them leaves the
// rollout pending, and the driver's stage start takes the listing only
// while it is fresh.
func TestFirstStageStartsWithApply(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	rc := &readCounter{Store: e.st}
	e.c.st = rc
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 2, 0, 0, 0)
	if r.Status != StatusRunning || r.Stage != 0 || r.StageStartedAt == nil || !r.StageStartedAt.Equal(e.clk.now()) {
		t.Fatalf("Apply returned %s, stage %d, started %v; want running, canary started now", r.Status, r.Stage, r.StageStartedAt)
	}
	if la, lr := rc.reads(); la != 1 || lr != 0 {
		t.Errorf("Apply: %d agent listings, %d rollout row listings; want its one listing, no rows read back", la, lr)
	}
	want := map[string]string{"s0": AgentAssigned, "s1": AgentAssigned, "s2": AgentWaiting, "s3": AgentWaiting, "s4": AgentWaiting}
	if diff := cmp.Diff(want, e.states(r.ID)); diff != "" {
		t.Fatalf("stored right after Apply (-want +got):\n%s", diff)
	}
	for i := range 5 {
		id := fmt.Sprintf("s%d", i)
		if got, want := e.assigned(id) != "", i < 2; got != want {
			t.Errorf("%s assigned %v right after Apply, want %v", id, got, want)
		}
	}
	e.deliver() // the canary's pushes, queued by Apply; s0 and s1 report
	for _, id := range []string{"s0", "s1"} {
		if got := e.fl.pushes(id); len(got) != 1 {
			t.Fatalf("canary %s got pushes %v, want one", id, got)
		}
	}
	e.step() // the canary passes
	e.step() // wave 1 starts
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Fatalf("rollout %s (%s), want completed", st.Status, st.Reason)
	}

	// Another replica drives rollouts: Apply here only creates it.
	var leader atomic.Bool
	e.c.o.Leader = leader.Load
	r2 := e.apply("sampling: {frequency_hz: 29}\n", "platform=systemd", 0, 0, 0, 0)
	if r2.Status != StatusPending || r2.Stage != -1 {
		t.Fatalf("Apply off the driving replica returned %s, stage %d; want pending, -1", r2.Status, r2.Stage)
	}
	if diff := cmp.Diff(map[string]string{"s0": AgentWaiting, "s1": AgentWaiting, "s2": AgentWaiting, "s3": AgentWaiting, "s4": AgentWaiting}, e.states(r2.ID)); diff != "" {
		t.Fatalf("stored after Apply off the driving replica (-want +got):\n%s", diff)
	}
	leader.Store(true)
	la0, _ := rc.reads()
	e.step() // the stage starts from Apply's listing
	if la, _ := rc.reads(); la != la0 {
		t.Errorf("stage start right after Apply: %d agent listings, want none", la-la0)
	}
	e.step()
	if st := e.status(r2.ID); st.Status != StatusCompleted {
		t.Fatalf("second rollout %s (%s), want completed", st.Status, st.Reason)
	}

	// A first stage started long after Apply lists the agents again.
	leader.Store(false)
	r3 := e.apply("sampling: {frequency_hz: 19}\n", "platform=systemd", 0, 0, 0, 0)
	leader.Store(true)
	e.clk.add(listedFor)
	la0, _ = rc.reads()
	e.step()
	if la, _ := rc.reads(); la == la0 {
		t.Errorf("stage start %s after Apply listed no agents", listedFor)
	}
	e.step()
	if st := e.status(r3.ID); st.Status != StatusCompleted {
		t.Fatalf("third rollout %s (%s), want completed", st.Status, st.Reason)
	}
}

// TestStagePushesInIDOrder: a stage's pushes go out in the order of the
// agents' ids (their reports then come back in about the order the store
// keeps their rows in), whatever order they were queued in.
func TestStagePushesInIDOrder(t *testing.T) {
	e := newEnv(t)
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprintf("a%02d", i)
	}
	rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for i, id := range ids {
		e.agent(id, systemd(i))
	}
	for _, id := range ids[:10] { // queued before the stage, in no order
		e.c.enqueue(id, nil, true)
	}
	e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.deliver()
	e.fl.mu.Lock()
	order := slices.Clone(e.fl.order)
	e.fl.mu.Unlock()
	if len(order) != len(ids) || !slices.IsSorted(order) {
		t.Fatalf("pushed %v, want the %d agents once each in id order", order, len(ids))
	}
}

// TestUpdatedAtFollowsTheSteps: a rollout's updatedAt is when the fleet
// last wrote it (a stage start, a stage's end, its completion), not when
// it was created.
func TestUpdatedAtFollowsTheSteps(t *testing.T) {
	e := newEnv(t)
	for i := range 2 {
		e.agent(fmt.Sprintf("s%d", i), systemd(i))
	}
	created := e.clk.now()
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 1, 0, 30*time.Second, 0)
	if !r.UpdatedAt.Equal(created) {
		t.Errorf("updatedAt at creation %v, want %v", r.UpdatedAt, created)
	}
	e.deliver()
	e.clk.add(time.Second)
	e.step() // the canary passes: the pause is written
	if st := e.status(r.ID); st.NextStageAt == nil || !st.UpdatedAt.Equal(e.clk.now()) {
		t.Fatalf("after the canary: next stage at %v, updatedAt %v; want a pause, written at %v", st.NextStageAt, st.UpdatedAt, e.clk.now())
	}
	e.clk.add(30 * time.Second)
	e.step() // wave 1 starts, is pushed and reports
	if st := e.status(r.ID); st.Stage != 1 || !st.UpdatedAt.Equal(e.clk.now()) {
		t.Fatalf("wave 1: stage %d, updatedAt %v; want stage 1 written at %v", st.Stage, st.UpdatedAt, e.clk.now())
	}
	e.clk.add(time.Second)
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted || !st.UpdatedAt.Equal(e.clk.now()) {
		t.Fatalf("%s, updatedAt %v; want completed at %v", st.Status, st.UpdatedAt, e.clk.now())
	}
}

// TestStageStartPushesWhateverTheBriefSays: an agent whose record said
// disconnected when Apply listed the targets, but that connected since,
// is pushed the config by the stage start, which took Apply's listing
// (the push is tried; it fails at once for an agent not connected).
func TestStageStartPushesWhateverTheBriefSays(t *testing.T) {
	e := newEnv(t)
	e.agent("s0", systemd(0))
	a, err := e.st.AgentByID(t.Context(), "s0")
	if err != nil {
		t.Fatal(err)
	}
	a.Connected = false
	if err := e.st.UpsertAgent(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	// s0 connects now, before the stage starts; it runs no config.
	if a, err = e.st.AgentByID(t.Context(), "s0"); err != nil {
		t.Fatal(err)
	}
	a.Connected = true
	if err := e.st.UpsertAgent(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	e.step()
	if got := e.fl.pushes("s0"); len(got) != 1 || got[0] != r.ConfigHash {
		t.Fatalf("s0 got pushes %v, want the rollout's config", got)
	}
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Errorf("rollout %s (%s), want completed", st.Status, st.Reason)
	}
}

// TestRunningConfigSettledAtStart: an agent that already runs the
// config is settled when its stage starts: no push, no report needed.
func TestRunningConfigSettledAtStart(t *testing.T) {
	e := newEnv(t)
	e.agent("s0", systemd(0))
	e.agent("s1", systemd(1))
	r1 := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.step()
	e.step()
	if st := e.status(r1.ID); st.Status != StatusCompleted {
		t.Fatalf("first rollout: %s", st.Status)
	}
	e.fl.mute["s0"], e.fl.mute["s1"] = true, true
	r2 := e.apply("sampling: {frequency_hz: 49}\n", "node in (0, 1)", 0, 0, 0, 0)
	e.step()
	if st := e.status(r2.ID); st.Status != StatusCompleted {
		t.Errorf("rollout of the config the agents run: %s %v, want completed in its first step", st.Status, e.states(r2.ID))
	}
	if got := e.fl.pushes("s0"); len(got) != 1 {
		t.Errorf("pushes to s0: %v; want only the first rollout's", got)
	}
}

// asgCounter counts assignment reads.
type asgCounter struct {
	store.Store
	mu sync.Mutex
	n  int
}

func (a *asgCounter) AssignmentByAgent(ctx context.Context, id string) (*store.Assignment, error) {
	a.mu.Lock()
	a.n++
	a.mu.Unlock()
	return a.Store.AssignmentByAgent(ctx, id)
}

// TestRestartSeedsAssignments: after a fleet restart, an agent that
// reconnects reporting its assigned config costs no assignment read; one
// that reports another config is read and pushed its own.
func TestRestartSeedsAssignments(t *testing.T) {
	e := newEnv(t)
	e.agent("s0", systemd(0))
	e.agent("s1", systemd(1))
	r := e.apply("sampling: {frequency_hz: 49}\n", "platform=systemd", 0, 0, 0, 0)
	e.step()
	e.step()
	if st := e.status(r.ID); st.Status != StatusCompleted {
		t.Fatalf("rollout: %s", st.Status)
	}
	e.restart()
	ac := &asgCounter{Store: e.st}
	e.c.st = ac
	e.c.seed(t.Context())
	ctx := t.Context()
	for _, id := range []string{"s0", "s1"} {
		a, err := e.st.AgentByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if id == "s1" {
			a.ConfigHash = "0000" // runs something else
		}
		e.c.OnAgentStatus(a)
	}
	e.step()
	if ac.n != 1 {
		t.Errorf("%d assignment reads for two reconnects; want 1 (s1's)", ac.n)
	}
	if got := e.fl.pushes("s1"); len(got) != 2 || got[1] != r.ConfigHash {
		t.Errorf("pushes to s1: %v; want the rollout's config again", got)
	}
	if got := e.fl.pushes("s0"); len(got) != 1 {
		t.Errorf("pushes to s0: %v; want none after the restart", got)
	}
}

// TestMessageCarriesJSON: a push carries the config's canonical JSON,
// typed as such, which reads back to the version's hash with the JSON
// parser and with the YAML one (an agent that only knows YAML); the reset
// is an empty body.
func TestMessageCarriesJSON(t *testing.T) {
	cfg, err := config.Parse([]byte("sampling: {frequency_hz: 49}\nexternal_labels: {a: \"\\u0080\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rc := Message(&store.ConfigVersion{ID: "v1", Hash: cfg.HashString(), YAML: string(y)}).RemoteConfig
	f := rc.GetConfig().GetConfigMap()[""]
	if f.GetContentType() != config.ContentTypeJSON || len(f.GetBody()) == 0 || f.GetBody()[0] != '{' {
		t.Fatalf("push body %q of type %q, want JSON", f.GetBody(), f.GetContentType())
	}
	if hex.EncodeToString(rc.GetConfigHash()) != cfg.HashString() {
		t.Errorf("push hash %x, want %s", rc.GetConfigHash(), cfg.HashString())
	}
	for name, parse := range map[string]func([]byte) (*config.Config, error){"ParseJSON": config.ParseJSON, "Parse": config.Parse} {
		if c, err := parse(f.GetBody()); err != nil || c.HashString() != cfg.HashString() {
			t.Errorf("%s of the push body: %v, %v; want hash %s", name, c, err, cfg.HashString())
		}
	}
	if reset := Message(nil).RemoteConfig; len(reset.GetConfig().GetConfigMap()[""].GetBody()) != 0 || hex.EncodeToString(reset.GetConfigHash()) != ResetHash {
		t.Errorf("reset push %v, want an empty body with ResetHash", reset)
	}
}

// ConfigJSON answers the body a push of the project's version carries,
// nil for a hash that is no version of the project, with one store read
// per version however often it is asked.
func TestConfigJSON(t *testing.T) {
	e := newEnv(t)
	e.agent("a1", systemd(1))
	r := e.apply("sampling: {frequency_hz: 49}\n", "", 0, 0, 0, 0)
	cv, err := e.st.ConfigVersionByHash(t.Context(), e.proj, r.ConfigHash)
	if err != nil {
		t.Fatal(err)
	}
	want := Message(cv).GetRemoteConfig().GetConfig().GetConfigMap()[""].GetBody()
	for range 3 {
		if got := e.c.ConfigJSON(e.proj, r.ConfigHash); string(got) != string(want) || len(got) == 0 {
			t.Fatalf("ConfigJSON = %s, want the push body %s", got, want)
		}
	}
	if got := e.c.ConfigJSON("another-project", r.ConfigHash); got != nil {
		t.Errorf("ConfigJSON of another project = %s, want nil", got)
	}
	if got := e.c.ConfigJSON(e.proj, ResetHash); got != nil {
		t.Errorf("ConfigJSON of the reset = %s, want nil", got)
	}
	e.c.cmu.Lock()
	n := len(e.c.bodies)
	e.c.cmu.Unlock()
	if n != 3 {
		t.Errorf("%d answers kept, want 3 (one per project and hash asked)", n)
	}
}
