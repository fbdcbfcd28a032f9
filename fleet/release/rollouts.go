package release

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unique"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/selector"
)

// Package statuses as the agent reports them (OpAMP PackageStatusEnum
// names without the prefix) and as the store keeps them.
const (
	StatusInstalling    = "INSTALLING"
	StatusInstalled     = "INSTALLED"
	StatusInstallFailed = "INSTALL_FAILED"
)

// ManagedByDaemonSet is the reason Kubernetes agents are skipped: their
// version is the DaemonSet's image, never replaced by the agent itself.
const ManagedByDaemonSet = "managed by DaemonSet"

// Pusher sends messages to connected agents (fleet/opamp.Server).
type Pusher = rollout.Pusher

// RolloutRequest starts a rollout of a release to the agents a selector
// picks, staged as config rollouts are.
type RolloutRequest struct {
	ProjectID string
	Version   string
	// Selector picks the target agents by label; "" means all agents.
	Selector string
	// Canary, WavePercent, WaveCount, WavePause and MaxFailurePercent
	// mean what they mean in rollout.ApplyRequest.
	Canary            int
	WavePercent       int
	WaveCount         int
	WavePause         time.Duration
	MaxFailurePercent int
	Actor             string
}

// Status is a release rollout with its progress.
type Status struct {
	*store.ReleaseRollout
	StageName  string                `json:"stageName,omitempty"`
	StageSizes []int                 `json:"stageSizes"`
	Targets    int                   `json:"targets"`
	Counts     map[string]int        `json:"counts"`
	Agents     []*store.RolloutAgent `json:"agents"`
}

// StartRollout validates a request and creates a release rollout. Agents
// on Kubernetes are not targets: they are listed as skipped, managed by
// their DaemonSet. Errors wrap ErrInvalid for bad input, store.ErrNotFound
// for an unknown project or version.
func (m *Manager) StartRollout(ctx context.Context, req RolloutRequest) (*Status, error) {
	if _, err := m.st.ProjectByID(ctx, req.ProjectID); err != nil {
		return nil, err
	}
	rel, err := m.rs.ReleaseByVersion(ctx, req.Version)
	if err != nil {
		return nil, err
	}
	sel, err := selector.Parse(req.Selector)
	if err != nil {
		return nil, fmt.Errorf("%w: selector: %w", ErrInvalid, err)
	}
	switch {
	case req.Canary < 0:
		return nil, fmt.Errorf("%w: canary: must not be negative, got %d", ErrInvalid, req.Canary)
	case req.WavePercent < 0 || req.WavePercent > 100:
		return nil, fmt.Errorf("%w: wave: percentage must be between 0 and 100, got %d", ErrInvalid, req.WavePercent)
	case req.WaveCount < 0:
		return nil, fmt.Errorf("%w: wave: count must not be negative, got %d", ErrInvalid, req.WaveCount)
	case req.WavePause < 0 || req.WavePause > 24*time.Hour:
		return nil, fmt.Errorf("%w: wavePause: must be between 0 and 24h, got %s", ErrInvalid, req.WavePause)
	case req.MaxFailurePercent < 0 || req.MaxFailurePercent > 100:
		return nil, fmt.Errorf("%w: maxFailure: percentage must be between 0 and 100, got %d", ErrInvalid, req.MaxFailurePercent)
	}
	now := m.o.Now().UTC()
	r := &store.ReleaseRollout{Version: rel.Version, Rollout: store.Rollout{
		ID: uuid.NewString(), ProjectID: req.ProjectID, ConfigID: rel.Version, ConfigHash: rel.SHA256,
		Selector: sel.String(), Specificity: sel.Specificity(), Canary: req.Canary, WavePercent: req.WavePercent,
		WaveCount: req.WaveCount, WavePause: req.WavePause, MaxFailurePercent: req.MaxFailurePercent,
		Stage: -1, Status: rollout.StatusPending, CreatedBy: req.Actor, CreatedAt: now, UpdatedAt: now,
	}}
	agents, err := m.st.ListAgents(ctx, store.AgentFilter{ProjectID: req.ProjectID, Brief: true, Match: func(a *store.Agent) bool { return sel.Matches(a.Labels) }})
	if err != nil {
		return nil, err
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	var targets []string
	var ras []*store.RolloutAgent
	for _, a := range agents {
		if a.Platform == describe.PlatformKubernetes {
			ras = append(ras, &store.RolloutAgent{RolloutID: r.ID, AgentID: a.ID, Stage: -1, State: rollout.AgentSkipped, Error: ManagedByDaemonSet, UpdatedAt: now})
			continue
		}
		targets = append(targets, a.ID)
	}
	sizes := rollout.Plan(len(targets), r.Canary, r.WavePercent, r.WaveCount)
	r.Stages = len(sizes)
	i := 0
	for stage, n := range sizes {
		for range n {
			ras = append(ras, &store.RolloutAgent{RolloutID: r.ID, AgentID: targets[i], Stage: stage, State: rollout.AgentWaiting, UpdatedAt: now})
			i++
		}
	}
	m.mu.Lock()
	err = m.rs.CreateReleaseRollout(ctx, r, ras)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m.log.Info("release rollout created", zap.String("rollout", r.ID), zap.String("version", r.Version), zap.String("selector", r.Selector),
		zap.Int("agents", len(targets)), zap.Ints("stages", sizes))
	m.audit(ctx, r, "release.rollout", "ok")
	m.wake()
	return m.Get(ctx, r.ID)
}

// Get returns a release rollout with its progress.
func (m *Manager) Get(ctx context.Context, id string) (*Status, error) {
	r, err := m.rs.ReleaseRolloutByID(ctx, id)
	if err != nil {
		return nil, err
	}
	ras, err := m.rs.ListReleaseRolloutAgents(ctx, id)
	if err != nil {
		return nil, err
	}
	st := &Status{ReleaseRollout: r, Counts: map[string]int{}, Agents: ras, StageSizes: make([]int, r.Stages)}
	if ras == nil {
		st.Agents = []*store.RolloutAgent{}
	}
	for _, ra := range ras {
		st.Counts[ra.State]++
		if ra.Stage >= 0 && ra.Stage < r.Stages {
			st.StageSizes[ra.Stage]++
			st.Targets++
		}
	}
	if r.Stage >= 0 {
		st.StageName = rollout.StageName(&r.Rollout, r.Stage)
	}
	return st, nil
}

// ListRollouts lists a project's release rollouts, newest first.
func (m *Manager) ListRollouts(ctx context.Context, projectID string) ([]*store.ReleaseRollout, error) {
	rs, err := m.rs.ListReleaseRollouts(ctx, store.RolloutFilter{ProjectID: projectID})
	if rs == nil {
		rs = []*store.ReleaseRollout{}
	}
	return rs, err
}

func (m *Manager) update(ctx context.Context, id string, fn func(r *store.ReleaseRollout) (*store.ReleaseRolloutChange, error)) (*Status, error) {
	m.mu.Lock()
	for range 5 {
		r, err := m.rs.ReleaseRolloutByID(ctx, id)
		if err != nil {
			m.mu.Unlock()
			return nil, err
		}
		ch, err := fn(r)
		if err != nil {
			m.mu.Unlock()
			return nil, err
		}
		err = m.rs.ApplyReleaseRolloutChange(ctx, ch)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		m.mu.Unlock()
		if err != nil {
			return nil, err
		}
		m.assignedNow(ch)
		m.wake()
		return m.Get(ctx, id)
	}
	m.mu.Unlock()
	return nil, fmt.Errorf("update release rollout %s: %w", id, store.ErrConflict)
}

// Pause stops a pending or running release rollout before its next stage.
func (m *Manager) Pause(ctx context.Context, id, actor string) (*Status, error) {
	return m.update(ctx, id, func(r *store.ReleaseRollout) (*store.ReleaseRolloutChange, error) {
		if r.Status != rollout.StatusRunning && r.Status != rollout.StatusPending {
			return nil, fmt.Errorf("pause release rollout %s: it is %s: %w", id, r.Status, store.ErrConflict)
		}
		n := *r
		n.Status, n.Reason, n.UpdatedAt = rollout.StatusPaused, "paused by "+actor, m.o.Now().UTC()
		return &store.ReleaseRolloutChange{Rollout: &n}, nil
	})
}

// Resume continues a paused release rollout.
func (m *Manager) Resume(ctx context.Context, id, actor string) (*Status, error) {
	return m.update(ctx, id, func(r *store.ReleaseRollout) (*store.ReleaseRolloutChange, error) {
		if r.Status != rollout.StatusPaused {
			return nil, fmt.Errorf("resume release rollout %s: it is %s, not paused: %w", id, r.Status, store.ErrConflict)
		}
		n := *r
		n.Status, n.Reason, n.UpdatedAt = rollout.StatusRunning, "", m.o.Now().UTC()
		if n.Stage < 0 {
			n.Status = rollout.StatusPending
		}
		return &store.ReleaseRolloutChange{Rollout: &n}, nil
	})
}

// Rollback stops a release rollout and offers every agent it reached the
// version it ran before (when the fleet has that release; otherwise the
// agent keeps what it runs and is no longer assigned a version).
func (m *Manager) Rollback(ctx context.Context, id, actor string) (*Status, error) {
	return m.update(ctx, id, func(r *store.ReleaseRollout) (*store.ReleaseRolloutChange, error) {
		if r.Status == rollout.StatusRolledBack {
			return nil, fmt.Errorf("roll back release rollout %s: already rolled back: %w", id, store.ErrConflict)
		}
		now := m.o.Now().UTC()
		n := *r
		n.Status, n.Reason, n.NextStageAt, n.UpdatedAt = rollout.StatusRolledBack, "rolled back by "+actor, nil, now
		ch := &store.ReleaseRolloutChange{Rollout: &n}
		ras, err := m.rs.ListReleaseRolloutAgents(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, ra := range ras {
			switch ra.State {
			case rollout.AgentAssigned, rollout.AgentApplied, rollout.AgentFailed:
			default:
				continue
			}
			u := *ra
			u.State, u.UpdatedAt = rollout.AgentRolledBack, now
			ch.Agents = append(ch.Agents, &u)
			cur, err := m.rs.ReleaseAssignmentByAgent(ctx, ra.AgentID)
			if err != nil || cur.RolloutID != r.ID {
				continue // another rollout took the agent over since
			}
			if ra.PreviousConfigID != "" {
				if _, err := m.rs.ReleaseByVersion(ctx, ra.PreviousConfigID); err == nil {
					ch.Assign = append(ch.Assign, &store.ReleaseAssignment{AgentID: ra.AgentID, ProjectID: r.ProjectID, Version: ra.PreviousConfigID, RolloutID: r.ID, UpdatedAt: now})
					continue
				}
			}
			ch.Unassign = append(ch.Unassign, ra.AgentID)
		}
		m.log.Info("rolling back release", zap.String("rollout", id), zap.Int("agents", len(ch.Agents)))
		return ch, nil
	})
}

// AssignmentChanged queues the agent for a full offer check, which reads
// its assignment from the store: another replica changed it. Nil-safe.
func (m *Manager) AssignmentChanged(a *store.Agent) { m.report(a, true) }

// OnAgentStatus is the opamp.Callbacks hook: it queues the agent for an
// offer check and returns at once. Nil-safe. The check reads the agent's
// assignment from the store only when the manager knows it has one for
// another version than the report's: assignment changes come with their
// own full check (this manager's writes, AssignmentChanged, Resync).
func (m *Manager) OnAgentStatus(a *store.Agent) { m.report(a, false) }

func (m *Manager) report(a *store.Agent, full bool) {
	if m == nil || a == nil {
		return
	}
	if a.Platform == describe.PlatformKubernetes {
		return // never offered a release (the DaemonSet owns its image)
	}
	cp := *a
	m.enqueueAgent(a.ID, &cp, full)
	m.wake()
}

// OnPackageStatuses records what an agent reports about installing its
// top-level package. It is called from the agent's connection goroutine.
// Nil-safe.
func (m *Manager) OnPackageStatuses(agentID string, ps *protobufs.PackageStatuses) {
	if m == nil {
		return
	}
	p := ps.GetPackages()[""]
	if p == nil || p.ServerOfferedVersion == "" {
		return
	}
	status := map[protobufs.PackageStatusEnum]string{
		protobufs.PackageStatusEnum_PackageStatusEnum_Installed:      StatusInstalled,
		protobufs.PackageStatusEnum_PackageStatusEnum_InstallPending: StatusInstalling,
		protobufs.PackageStatusEnum_PackageStatusEnum_Installing:     StatusInstalling,
		protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed:  StatusInstallFailed,
		protobufs.PackageStatusEnum_PackageStatusEnum_Downloading:    StatusInstalling,
	}[p.Status]
	if status == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.rs.SetReleaseStatus(ctx, agentID, p.ServerOfferedVersion, status, p.ErrorMessage, m.o.Now()); err != nil {
		m.log.Warn("record package status", zap.String("agent", agentID), zap.Error(err))
		return
	}
	if status == StatusInstallFailed {
		m.log.Warn("agent upgrade failed", zap.String("agent", agentID), zap.String("version", p.ServerOfferedVersion), zap.String("reason", p.ErrorMessage))
	}
	m.wake()
}

// queued is an agent waiting for an offer check. full: its assignment may
// have changed, so the check reads it whatever the manager remembers.
type queued struct {
	agent *store.Agent
	full  bool
}

// enqueue queues agents for a full check, under one lock and with one
// wake-up however many they are (a stage start queues every agent of the
// stage).
func (m *Manager) enqueue(ids ...string) {
	m.queueUp(func() {
		for _, id := range ids {
			q := m.queue[id]
			q.full = true
			m.queue[id] = q
		}
	})
}

// enqueueAgent queues an agent for a release check; a (when not nil) is
// its record as just written, which spares the check a store read.
func (m *Manager) enqueueAgent(id string, a *store.Agent, full bool) {
	m.queueUp(func() {
		q := m.queue[id]
		q.full = q.full || full
		if a != nil {
			q.agent = a
		}
		m.queue[id] = q
	})
}

// queueUp changes the queue under its lock and wakes the dispatcher.
func (m *Manager) queueUp(change func()) {
	m.qmu.Lock()
	change()
	m.qmu.Unlock()
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run advances release rollouts and offers assigned releases through p
// until ctx ends. A nil Manager (a store without releases) just waits.
func (m *Manager) Run(ctx context.Context, p Pusher) error {
	if m == nil {
		<-ctx.Done()
		return nil
	}
	m.qmu.Lock()
	m.pusher = p
	m.started = m.o.Now()
	m.qmu.Unlock()
	// The first listing runs before any report is checked; it queues the
	// connected agents that have an assignment.
	if err := m.sync(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("list release assignments", zap.Error(err))
		m.enqueue(p.Connected()...) // the memory is empty: every check reads
	} else {
		m.log.Debug("release assignments loaded", zap.Int("agents", m.asg.size()))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.resync(ctx) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-m.signal:
			}
			m.qmu.Lock()
			batch := m.queue
			m.queue = map[string]queued{}
			m.qmu.Unlock()
			// In the order of the agents' ids (they were in a map's):
			// with time-ordered ids that is the order the store keeps
			// their rows in, for the checks' reads and the reports'
			// writes that follow the offers.
			for _, id := range slices.Sorted(maps.Keys(batch)) {
				if ctx.Err() != nil {
					return
				}
				q := batch[id]
				m.reconcile(ctx, id, q.agent, q.full)
			}
		}
	}()
	t := time.NewTicker(m.o.Tick)
	defer t.Stop()
	for {
		if m.o.Leader == nil || m.o.Leader() {
			m.Step(ctx)
		}
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-t.C:
		case <-m.kick:
			// A burst of reports costs one step per Tick/10 at most.
			select {
			case <-ctx.Done():
			case <-time.After(m.o.Tick / 10):
			}
		}
	}
}

// resync re-reads the release assignments every Resync (every Tick
// while the last listing failed) until ctx ends.
//
// Why a periodic listing: this manager's own writes and the checks that
// AssignmentChanged queues keep the memory current, but fleet/server
// hands a replica the bus notifications (store.TopicAssign) of another
// replica's writes only for the agents connected to it, and its poll of
// assignments covers config assignments, not release ones. An agent
// connected elsewhere when the leader assigned it a release, or whose
// notification was lost, would otherwise never be offered it here. The
// listing bounds that delay to Resync and costs one query per project,
// reading only the agents that have an assignment.
func (m *Manager) resync(ctx context.Context) {
	wait := m.o.Resync
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = m.o.Resync
		if err := m.sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("list release assignments", zap.Error(err))
			wait = min(m.o.Tick, m.o.Resync)
		}
	}
}

// sync lists every project's release assignments into the memory and
// queues the agents connected here whose assignment appeared or changed.
func (m *Manager) sync(ctx context.Context) error {
	m.asg.begin()
	ps, err := m.st.ListProjects(ctx)
	if err != nil {
		m.asg.abort()
		return fmt.Errorf("list projects: %w", err)
	}
	all := map[string]unique.Handle[string]{}
	for _, p := range ps {
		as, err := m.rs.ListReleaseAssignments(ctx, p.ID)
		if err != nil {
			m.asg.abort()
			return fmt.Errorf("list release assignments of project %s: %w", p.ID, err)
		}
		for _, a := range as {
			all[a.AgentID] = unique.Make(a.Version)
		}
	}
	changed, dropped := m.asg.replace(all)
	m.qmu.Lock()
	for _, id := range dropped {
		delete(m.pushed, id)
	}
	p := m.pusher
	m.qmu.Unlock()
	if len(changed) == 0 || p == nil {
		return nil
	}
	local := map[string]bool{}
	for _, id := range p.Connected() {
		local[id] = true
	}
	var queue []string
	for _, id := range changed {
		if local[id] {
			queue = append(queue, id)
		}
	}
	m.enqueue(queue...)
	return nil
}

// reconcile offers an agent its assigned release when it runs another
// version and has not failed to install that one. Unless full, an agent
// that the manager knows has no assignment, or runs the assigned version,
// is left alone without a store read.
func (m *Manager) reconcile(ctx context.Context, id string, a *store.Agent, full bool) {
	if a != nil && !a.Connected {
		m.qmu.Lock()
		delete(m.pushed, id)
		m.qmu.Unlock()
		return
	}
	if !full {
		if v, known := m.asg.lookup(id); known && (v == "" || (a != nil && a.Version == v)) {
			return
		}
	}
	if a == nil {
		var err error
		if a, err = m.st.AgentByID(ctx, id); err != nil {
			return
		}
	}
	if !a.Connected || a.Platform == describe.PlatformKubernetes {
		m.qmu.Lock()
		delete(m.pushed, id)
		m.qmu.Unlock()
		return
	}
	asg, err := m.rs.ReleaseAssignmentByAgent(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		m.asg.drop(id)
		return
	}
	if err != nil {
		return
	}
	m.asg.set(id, asg.Version)
	if asg.Version == a.Version || asg.Status == StatusInstallFailed {
		return
	}
	now := m.o.Now()
	m.qmu.Lock()
	rec, ok := m.pushed[id]
	if ok && rec.version == asg.Version && now.Sub(rec.at) < m.o.PushRetry {
		m.qmu.Unlock()
		return
	}
	m.pushed[id] = pushRec{version: asg.Version, at: now}
	p := m.pusher
	m.qmu.Unlock()
	rel, err := m.rs.ReleaseByVersion(ctx, asg.Version)
	if err != nil {
		m.log.Warn("load assigned release", zap.String("agent", id), zap.Error(err))
		return
	}
	if err := p.Send(ctx, id, &protobufs.ServerToAgent{PackagesAvailable: Offer(m.o.FleetURL, rel)}); err != nil {
		m.log.Debug("offer release", zap.String("agent", id), zap.Error(err))
		m.qmu.Lock()
		delete(m.pushed, id)
		m.qmu.Unlock()
		return
	}
	m.log.Info("offered release", zap.String("agent", id), zap.String("version", rel.Version), zap.String("running", a.Version))
}

// Step evaluates every live release rollout once.
func (m *Manager) Step(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rs, err := m.rs.ListReleaseRollouts(ctx, store.RolloutFilter{Statuses: []string{rollout.StatusPending, rollout.StatusRunning}})
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("list release rollouts", zap.Error(err))
		}
		return
	}
	slices.Reverse(rs)
	for _, r := range rs {
		if err := m.advance(ctx, r); err != nil && ctx.Err() == nil {
			m.log.Warn("advance release rollout", zap.String("rollout", r.ID), zap.Error(err))
		}
	}
}

func (m *Manager) advance(ctx context.Context, r *store.ReleaseRollout) error {
	now := m.o.Now().UTC()
	for range 2*r.Stages + 2 {
		ras, err := m.rs.ListReleaseRolloutAgents(ctx, r.ID)
		if err != nil {
			return err
		}
		switch {
		case r.Stages == 0 || (r.Stage == r.Stages-1 && r.NextStageAt != nil):
			n := *r
			n.Status, n.NextStageAt, n.Reason, n.UpdatedAt = rollout.StatusCompleted, nil, "", now
			n.Stage = max(r.Stages-1, 0)
			if err := m.rs.ApplyReleaseRolloutChange(ctx, &store.ReleaseRolloutChange{Rollout: &n}); err != nil {
				return err
			}
			m.log.Info("release rollout completed", zap.String("rollout", r.ID), zap.String("version", r.Version))
			m.audit(ctx, &n, "release.rollout.complete", "ok")
			return nil
		case r.Stage < 0 || (r.NextStageAt != nil && !now.Before(*r.NextStageAt)):
			if err := m.startStage(ctx, r, ras, r.Stage+1, now); err != nil {
				return err
			}
		case r.NextStageAt != nil:
			return nil
		default:
			over, err := m.evaluate(ctx, r, ras, now)
			if err != nil || !over || r.Status != rollout.StatusRunning {
				return err
			}
		}
	}
	return nil
}

func (m *Manager) startStage(ctx context.Context, r *store.ReleaseRollout, ras []*store.RolloutAgent, k int, now time.Time) error {
	next := *r
	next.Status, next.Stage, next.StageStartedAt, next.NextStageAt, next.Reason = rollout.StatusRunning, k, &now, nil, ""
	ch := &store.ReleaseRolloutChange{Rollout: &next}
	for _, ra := range ras {
		if ra.Stage != k || ra.State != rollout.AgentWaiting {
			continue
		}
		u := *ra
		u.State, u.UpdatedAt = rollout.AgentAssigned, now
		if a, err := m.st.AgentByID(ctx, ra.AgentID); err == nil {
			u.PreviousConfigID = a.Version // what a rollback offers again
		}
		ch.Agents = append(ch.Agents, &u)
		ch.Assign = append(ch.Assign, &store.ReleaseAssignment{AgentID: ra.AgentID, ProjectID: r.ProjectID, Version: r.Version, RolloutID: r.ID, UpdatedAt: now})
	}
	if err := m.rs.ApplyReleaseRolloutChange(ctx, ch); err != nil {
		return err
	}
	*r = next
	m.log.Info("release rollout stage started", zap.String("rollout", r.ID), zap.String("stage", rollout.StageName(&r.Rollout, k)), zap.Int("agents", len(ch.Assign)))
	m.assignedNow(ch)
	return nil
}

// assignedNow records the assignments that ch (just written) set or
// removed and queues those agents for a full check.
func (m *Manager) assignedNow(ch *store.ReleaseRolloutChange) {
	ids := make([]string, 0, len(ch.Assign)+len(ch.Unassign))
	for _, a := range ch.Assign {
		m.asg.set(a.AgentID, a.Version)
		ids = append(ids, a.AgentID)
	}
	for _, id := range ch.Unassign {
		m.asg.drop(id)
		ids = append(ids, id)
	}
	m.enqueue(ids...)
}

// evaluate records the current stage's results; true when the stage is
// over (next stage scheduled, or the rollout halted).
func (m *Manager) evaluate(ctx context.Context, r *store.ReleaseRollout, ras []*store.RolloutAgent, now time.Time) (bool, error) {
	since := *r.StageStartedAt
	if since.Before(m.started) {
		since = m.started
	}
	timedOut := now.Sub(since) >= m.o.AgentTimeout
	var upd []*store.RolloutAgent
	size, failed, open := 0, 0, 0
	var reasons []string
	for _, ra := range ras {
		if ra.Stage != r.Stage {
			continue
		}
		size++
		state, msg := ra.State, ra.Error
		if ra.State == rollout.AgentAssigned {
			state, msg = m.result(ctx, r, ra.AgentID, timedOut)
			if state != rollout.AgentAssigned {
				u := *ra
				u.State, u.Error, u.UpdatedAt = state, msg, now
				upd = append(upd, &u)
			}
		}
		switch state {
		case rollout.AgentFailed:
			failed++
			if len(reasons) < 3 {
				reasons = append(reasons, "agent "+ra.AgentID+": "+msg)
			}
		case rollout.AgentAssigned, rollout.AgentWaiting:
			open++
		}
	}
	next := *r
	ch := &store.ReleaseRolloutChange{Rollout: &next, Agents: upd}
	over := true
	switch {
	case size > 0 && failed > 0 && failed*100 > r.MaxFailurePercent*size:
		next.Status = rollout.StatusHalted
		next.Reason = fmt.Sprintf("%s failed: %d of %d agents failed (%d%%, more than the %d%% allowed): %s",
			rollout.StageName(&r.Rollout, r.Stage), failed, size, failed*100/size, r.MaxFailurePercent, strings.Join(reasons, "; "))
	case open == 0:
		t := now.Add(r.WavePause)
		next.NextStageAt = &t
	default:
		over = false
		ch.Rollout = nil
		if len(upd) == 0 {
			return false, nil
		}
	}
	if err := m.rs.ApplyReleaseRolloutChange(ctx, ch); err != nil {
		return false, err
	}
	if over {
		*r = next
		if r.Status == rollout.StatusHalted {
			m.log.Warn("release rollout halted", zap.String("rollout", r.ID), zap.String("reason", r.Reason))
			m.audit(ctx, r, "release.rollout.halt", r.Reason)
		} else {
			m.log.Info("release rollout stage passed", zap.String("rollout", r.ID), zap.String("stage", rollout.StageName(&r.Rollout, r.Stage)))
		}
	}
	return over, nil
}

// result is an agent's state in a running stage: applied once it runs
// the version, connected and healthy; failed when it reports
// INSTALL_FAILED for it or the stage timed out.
func (m *Manager) result(ctx context.Context, r *store.ReleaseRollout, agentID string, timedOut bool) (string, string) {
	a, err := m.st.AgentByID(ctx, agentID)
	if err != nil {
		return rollout.AgentFailed, "agent was deleted"
	}
	if asg, err := m.rs.ReleaseAssignmentByAgent(ctx, agentID); err == nil && asg.Version == r.Version && asg.Status == StatusInstallFailed {
		return rollout.AgentFailed, "upgrade to " + r.Version + " failed: " + asg.Error
	}
	if a.Version == r.Version && a.Connected && a.Healthy {
		return rollout.AgentApplied, ""
	}
	if !timedOut {
		return rollout.AgentAssigned, ""
	}
	switch {
	case !a.Connected:
		return rollout.AgentFailed, fmt.Sprintf("disconnected for more than %s", m.o.AgentTimeout)
	case a.Version != r.Version:
		return rollout.AgentFailed, fmt.Sprintf("still runs %s after %s", a.Version, m.o.AgentTimeout)
	}
	return rollout.AgentFailed, "unhealthy after the upgrade: " + a.Health
}

func (m *Manager) audit(ctx context.Context, r *store.ReleaseRollout, action, result string) {
	if err := m.st.AppendAudit(ctx, &store.AuditEntry{Time: m.o.Now().UTC(), Actor: "fleet", ProjectID: r.ProjectID, Action: action,
		Target: r.ID + " (" + r.Version + ")", Result: result}); err != nil {
		m.log.Warn("write audit log", zap.Error(err))
	}
}
