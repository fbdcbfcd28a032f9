package rollout

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Status is a rollout with its progress, as the API shows it.
type Status struct {
	*store.Rollout
	ConfigVersion int    `json:"configVersion"`
	StageName     string `json:"stageName,omitempty"`
	// StageSizes are the agents per stage (canary first when there is one).
	StageSizes []int `json:"stageSizes"`
	Targets    int   `json:"targets"`
	// Counts by agent state (waiting, assigned, applied, failed, skipped,
	// rolled_back).
	Counts map[string]int        `json:"counts"`
	Agents []*store.RolloutAgent `json:"agents"`
}

// Get returns a rollout with its progress.
func (c *Controller) Get(ctx context.Context, id string) (*Status, error) {
	r, err := c.st.RolloutByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.status(ctx, r)
}

// Summary returns a rollout with its progress counted in the store, without
// the list of agents (what a poller needs; Agents is empty).
func (c *Controller) Summary(ctx context.Context, id string) (*Status, error) {
	r, err := c.st.RolloutByID(ctx, id)
	if err != nil {
		return nil, err
	}
	counts, err := c.st.CountRolloutAgents(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	st := &Status{Rollout: r, Counts: map[string]int{}, Agents: []*store.RolloutAgent{}, StageSizes: make([]int, r.Stages)}
	for _, n := range counts {
		st.Targets += n.N
		st.Counts[n.State] += n.N
		if n.Stage >= 0 && n.Stage < r.Stages {
			st.StageSizes[n.Stage] += n.N
		}
	}
	if r.Stage >= 0 {
		st.StageName = StageName(r, r.Stage)
	}
	if cv, err := c.configVersion(ctx, r.ConfigID); err == nil {
		st.ConfigVersion = cv.Version
	}
	return st, nil
}

func (c *Controller) status(ctx context.Context, r *store.Rollout) (*Status, error) {
	ras, err := c.st.ListRolloutAgents(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	st := &Status{Rollout: r, Targets: len(ras), Counts: map[string]int{}, Agents: ras, StageSizes: make([]int, r.Stages)}
	if ras == nil {
		st.Agents = []*store.RolloutAgent{}
	}
	for _, ra := range ras {
		st.Counts[ra.State]++
		if ra.Stage >= 0 && ra.Stage < r.Stages {
			st.StageSizes[ra.Stage]++
		}
	}
	if r.Stage >= 0 {
		st.StageName = StageName(r, r.Stage)
	}
	if cv, err := c.configVersion(ctx, r.ConfigID); err == nil {
		st.ConfigVersion = cv.Version
	}
	return st, nil
}

// List returns a project's rollouts, newest first.
func (c *Controller) List(ctx context.Context, projectID string) ([]*store.Rollout, error) {
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{ProjectID: projectID})
	if rs == nil {
		rs = []*store.Rollout{}
	}
	return rs, err
}

// update runs fn on the stored rollout under the controller lock and
// writes the change. fn returns the change to write (its Rollout is the
// modified copy) or an error.
func (c *Controller) update(ctx context.Context, id string, fn func(r *store.Rollout) (*store.RolloutChange, error)) (*Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for range 5 {
		r, err := c.st.RolloutByID(ctx, id)
		if err != nil {
			return nil, err
		}
		ch, err := fn(r)
		if err != nil {
			return nil, err
		}
		err = c.st.ApplyRolloutChange(ctx, ch)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, a := range ch.Assign {
			c.enqueue(a.AgentID, nil, true)
		}
		c.wake()
		return c.status(ctx, ch.Rollout)
	}
	return nil, fmt.Errorf("update rollout %s: %w", id, store.ErrConflict)
}

// Pause stops a pending or running rollout before its next stage. Agents
// of the current stage keep what they were pushed.
func (c *Controller) Pause(ctx context.Context, id, actor string) (*Status, error) {
	return c.update(ctx, id, func(r *store.Rollout) (*store.RolloutChange, error) {
		if r.Status != StatusRunning && r.Status != StatusPending {
			return nil, fmt.Errorf("pause rollout %s: it is %s: %w", id, r.Status, store.ErrConflict)
		}
		n := *r
		n.Status, n.Reason = StatusPaused, "paused by "+actor
		n.UpdatedAt = c.o.Now().UTC()
		return &store.RolloutChange{Rollout: &n}, nil
	})
}

// Resume continues a paused rollout.
func (c *Controller) Resume(ctx context.Context, id, actor string) (*Status, error) {
	return c.update(ctx, id, func(r *store.Rollout) (*store.RolloutChange, error) {
		if r.Status != StatusPaused {
			return nil, fmt.Errorf("resume rollout %s: it is %s, not paused: %w", id, r.Status, store.ErrConflict)
		}
		n := *r
		n.Status, n.Reason = StatusRunning, ""
		if n.Stage < 0 {
			n.Status = StatusPending
		}
		n.UpdatedAt = c.o.Now().UTC()
		return &store.RolloutChange{Rollout: &n}, nil
	})
}

// Rollback stops a rollout and gives every agent it reached the config it
// had before: the previous version, or (when it had none) the config the
// conflict rule picks among other completed rollouts, or its local config.
func (c *Controller) Rollback(ctx context.Context, id, actor string) (*Status, error) {
	return c.update(ctx, id, func(r *store.Rollout) (*store.RolloutChange, error) {
		if r.Status == StatusRolledBack {
			return nil, fmt.Errorf("roll back rollout %s: already rolled back: %w", id, store.ErrConflict)
		}
		now := c.o.Now().UTC()
		n := *r
		n.Status, n.Reason, n.NextStageAt, n.UpdatedAt = StatusRolledBack, "rolled back by "+actor, nil, now
		ch := &store.RolloutChange{Rollout: &n}
		ras, err := c.st.ListRolloutAgents(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		asgs, err := c.st.ListAssignments(ctx, r.ProjectID)
		if err != nil {
			return nil, err
		}
		current := map[string]*store.Assignment{}
		for _, a := range asgs {
			current[a.AgentID] = a
		}
		for _, ra := range ras {
			switch ra.State {
			case AgentAssigned, AgentApplied, AgentFailed:
			default:
				continue
			}
			u := *ra
			u.State, u.UpdatedAt = AgentRolledBack, now
			ch.Agents = append(ch.Agents, &u)
			if cur := current[ra.AgentID]; cur == nil || cur.RolloutID != r.ID {
				continue // another rollout took the agent over since
			}
			asg := &store.Assignment{AgentID: ra.AgentID, ProjectID: r.ProjectID, ConfigID: "", ConfigHash: ResetHash, UpdatedAt: now}
			if ra.PreviousConfigID != "" {
				cv, err := c.configVersion(ctx, ra.PreviousConfigID)
				if err != nil {
					return nil, err
				}
				asg.ConfigID, asg.ConfigHash = cv.ID, cv.Hash
			} else if a, err := c.st.AgentByID(ctx, ra.AgentID); err == nil {
				if best, err := c.resolve(ctx, a, r.ID); err != nil {
					return nil, err
				} else if best != nil {
					asg.ConfigID, asg.ConfigHash, asg.RolloutID = best.ConfigID, best.ConfigHash, best.ID
				}
			}
			ch.Assign = append(ch.Assign, asg)
		}
		c.log.Info("rolling back", zap.String("rollout", id), zap.Int("agents", len(ch.Assign)))
		return ch, nil
	})
}
