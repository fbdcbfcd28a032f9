package store

import (
	"context"
	"time"
)

// ConfigVersion is one immutable remote-config document of a project.
// Versions are numbered 1, 2, … per project in the order they are created.
type ConfigVersion struct {
	ID        string    `json:"id"` // uuid
	ProjectID string    `json:"projectId"`
	Version   int       `json:"version"` // set by CreateConfigVersion
	Hash      string    `json:"hash"`    // hex of config.Hash
	YAML      string    `json:"yaml"`    // canonical YAML (config.Marshal)
	CreatedBy string    `json:"createdBy,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// Assignment is the config version an agent should run: the desired
// state the fleet pushes until the agent reports that hash.
type Assignment struct {
	AgentID    string    `json:"agentId"`
	ProjectID  string    `json:"projectId"`
	ConfigID   string    `json:"configId"`
	ConfigHash string    `json:"configHash"`
	RolloutID  string    `json:"rolloutId,omitempty"` // the rollout that assigned it
	UpdatedAt  time.Time `json:"updatedAt"`
}

// Rollout moves one config version to the agents a selector picked, in
// stages: stage 0 is the canary (when Canary > 0), then waves. Status
// words are the constants of package rollout, stored verbatim.
type Rollout struct {
	ID         string `json:"id"`
	ProjectID  string `json:"projectId"`
	ConfigID   string `json:"configId"`
	ConfigHash string `json:"configHash"`
	Selector   string `json:"selector"` // canonical selector text
	// Specificity of Selector: the conflict rule prefers higher, then newer.
	Specificity int `json:"specificity"`
	Canary      int `json:"canary"`      // agents in the canary stage
	WavePercent int `json:"wavePercent"` // share of targets per wave (when WaveCount is 0)
	WaveCount   int `json:"waveCount"`   // agents per wave
	// WavePause is the wait between stages.
	WavePause time.Duration `json:"wavePause"`
	// MaxFailurePercent: a stage whose failed share passes it halts the
	// rollout.
	MaxFailurePercent int `json:"maxFailurePercent"`
	Stages            int `json:"stages"` // number of stages
	Stage             int `json:"stage"`  // current stage, -1 before the first starts
	// StageStartedAt is when the current stage's agents were assigned.
	StageStartedAt *time.Time `json:"stageStartedAt,omitempty"`
	// NextStageAt is when the next stage may start (end of a wave pause).
	NextStageAt *time.Time `json:"nextStageAt,omitempty"`
	Status      string     `json:"status"`
	Reason      string     `json:"reason,omitempty"` // why it halted, paused, …
	CreatedBy   string     `json:"createdBy,omitempty"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	// RowVersion for optimistic concurrency: a write with a stale version
	// fails with ErrConflict.
	RowVersion int64 `json:"rowVersion"`
}

// RolloutAgent is one agent's part in a rollout.
type RolloutAgent struct {
	RolloutID string `json:"rolloutId"`
	AgentID   string `json:"agentId"`
	Stage     int    `json:"stage"`
	// PreviousConfigID is what the agent was assigned before this rollout
	// reached it ("" for its local config); rollback restores it.
	PreviousConfigID string    `json:"previousConfigId,omitempty"`
	State            string    `json:"state"` // waiting | assigned | applied | failed | rolled_back
	Error            string    `json:"error,omitempty"`
	UpdatedAt        time.Time `json:"updatedAt"`
}

// RolloutFilter narrows ListRollouts. Zero fields match everything.
type RolloutFilter struct {
	ProjectID string
	Statuses  []string
}

// RolloutChange is one atomic step of a rollout: the rollout row (written
// only if its RowVersion is current), its agents' rows, and the
// assignments it sets or removes.
type RolloutChange struct {
	// Create inserts the rollout row instead of updating it: the rollout
	// is new (its RowVersion becomes 1; ErrConflict if the id exists).
	// A rollout whose first stage starts as it is created is one
	// transaction, not two.
	Create   bool
	Rollout  *Rollout
	Agents   []*RolloutAgent
	Assign   []*Assignment
	Unassign []string // agent ids whose assignment is removed
}

// Configs stores config versions and per-agent assignments.
type Configs interface {
	// CreateConfigVersion stores c with the project's next version number
	// (set in c.Version). A version with the same hash is not stored
	// twice: it fails with ErrConflict and leaves c unchanged.
	CreateConfigVersion(ctx context.Context, c *ConfigVersion) error
	ConfigVersionByID(ctx context.Context, id string) (*ConfigVersion, error)
	// ConfigVersionByHash finds a project's version by hash.
	ConfigVersionByHash(ctx context.Context, projectID, hash string) (*ConfigVersion, error)
	// ListConfigVersions lists a project's versions, newest first.
	ListConfigVersions(ctx context.Context, projectID string) ([]*ConfigVersion, error)
	// AssignmentByAgent returns an agent's assignment or ErrNotFound.
	AssignmentByAgent(ctx context.Context, agentID string) (*Assignment, error)
	// ListAssignments lists a project's assignments.
	ListAssignments(ctx context.Context, projectID string) ([]*Assignment, error)
	// SetAssignments upserts assignments in one transaction.
	SetAssignments(ctx context.Context, as []*Assignment) error
}

// RolloutAgentCount is how many agents of a rollout are in a state at a
// stage.
type RolloutAgentCount struct {
	Stage int
	State string
	N     int
}

// Rollouts stores rollouts and their progress.
type Rollouts interface {
	// CreateRollout stores a rollout (RowVersion becomes 1) with its
	// agents in one transaction.
	CreateRollout(ctx context.Context, r *Rollout, agents []*RolloutAgent) error
	RolloutByID(ctx context.Context, id string) (*Rollout, error)
	// ListRollouts lists rollouts, newest first.
	ListRollouts(ctx context.Context, f RolloutFilter) ([]*Rollout, error)
	// ListRolloutAgents lists a rollout's agents by stage, then agent id.
	ListRolloutAgents(ctx context.Context, rolloutID string) ([]*RolloutAgent, error)
	// CountRolloutAgents counts a rollout's agents by stage and state,
	// ordered by stage then state (progress without listing them all).
	CountRolloutAgents(ctx context.Context, rolloutID string) ([]RolloutAgentCount, error)
	// ApplyRolloutChange writes ch in one transaction. The rollout row is
	// written only at its current RowVersion (ErrConflict otherwise, and
	// nothing is written), or inserted when ch.Create; on success
	// ch.Rollout.RowVersion is the new one.
	ApplyRolloutChange(ctx context.Context, ch *RolloutChange) error
}
