package rollout

import (
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Rollout statuses, stored verbatim.
const (
	// StatusPending: created, no stage started yet.
	StatusPending = "pending"
	// StatusRunning: a stage is in progress or a wave pause is running.
	StatusRunning = "running"
	// StatusPaused: stopped by an operator; resume continues.
	StatusPaused = "paused"
	// StatusHalted: a stage failed past the threshold; Reason says why.
	StatusHalted = "halted"
	// StatusCompleted: every stage passed; the config is the binding for
	// its selector (agents that connect later get it).
	StatusCompleted = "completed"
	// StatusRolledBack: the agents it reached got their previous config.
	StatusRolledBack = "rolled_back"
)

// Agent states within a rollout (store.RolloutAgent.State).
const (
	AgentWaiting    = "waiting"  // its stage has not started
	AgentAssigned   = "assigned" // config assigned and pushed, no result yet
	AgentApplied    = "applied"
	AgentFailed     = "failed"
	AgentSkipped    = "skipped" // a rollout that wins the conflict rule owns it
	AgentRolledBack = "rolled_back"
)

// Plan returns the stage sizes for n target agents: a canary of canary
// agents (when > 0), then waves of waveCount agents, or of wavePercent
// percent of n (rounded up), or one wave with the rest when both are 0.
func Plan(n, canary, wavePercent, waveCount int) []int {
	var out []int
	if n <= 0 {
		return nil
	}
	if canary > 0 {
		c := min(canary, n)
		out = append(out, c)
		n -= c
	}
	w := n
	switch {
	case waveCount > 0:
		w = waveCount
	case wavePercent > 0:
		w = (wavePercent*(n+sum(out)) + 99) / 100
	}
	w = max(w, 1)
	for n > 0 {
		s := min(w, n)
		out = append(out, s)
		n -= s
	}
	return out
}

func sum(xs []int) int {
	t := 0
	for _, x := range xs {
		t += x
	}
	return t
}

// Wins reports whether rollout a takes precedence over b for an agent
// both select: the more specific selector wins (more requirements), then
// the newer rollout, then the greater id. This is the documented rule for
// conflicting assignments.
func Wins(a, b *store.Rollout) bool {
	if a.Specificity != b.Specificity {
		return a.Specificity > b.Specificity
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.After(b.CreatedAt)
	}
	return a.ID > b.ID
}

// Active reports whether a status is not final.
func Active(status string) bool {
	return status == StatusPending || status == StatusRunning || status == StatusPaused
}

func ptr(t time.Time) *time.Time { return &t }
