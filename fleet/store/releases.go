package store

import (
	"context"
	"time"
)

// Release is one agent build the fleet can offer: its bytes are kept by
// the fleet (uploaded) or fetched from URL (registered by URL), and it is
// signed with the fleet's release key (not the token key).
type Release struct {
	Version string `json:"version"` // unique, e.g. v1.4.2
	SHA256  string `json:"sha256"`  // hex of the binary's sha256
	// Signature is the Ed25519 signature (base64 in JSON) of
	// release.SignedMessage(Version, SHA256) by the release key.
	Signature []byte `json:"signature"`
	Size      int64  `json:"size"` // bytes
	// URL is where agents download it; "" means the fleet serves it.
	URL       string    `json:"url,omitempty"`
	Platform  string    `json:"platform"` // GOOS/GOARCH, e.g. linux/amd64
	CreatedBy string    `json:"createdBy,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// ReleaseRollout moves one agent release to the agents a selector picked,
// in the stages of a config Rollout: the embedded Rollout carries the
// selector, stages, status and progress (its ConfigID and ConfigHash hold
// the release version and sha256).
type ReleaseRollout struct {
	Rollout
	Version string `json:"version"`
}

// ReleaseAssignment is the agent version an agent should run, and what
// the agent last reported about installing it (OpAMP PackageStatuses).
type ReleaseAssignment struct {
	AgentID   string `json:"agentId"`
	ProjectID string `json:"projectId"`
	Version   string `json:"version"`
	RolloutID string `json:"rolloutId,omitempty"`
	// Status is the agent's report for Version: "" (none yet), INSTALLING,
	// INSTALLED or INSTALL_FAILED; Error says why it failed.
	Status    string    `json:"status,omitempty"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// ReleaseRolloutChange is one atomic step of a release rollout, as
// RolloutChange is for config rollouts.
type ReleaseRolloutChange struct {
	Rollout  *ReleaseRollout // written only at its current RowVersion
	Agents   []*RolloutAgent
	Assign   []*ReleaseAssignment
	Unassign []string // agent ids whose release assignment is removed
}

// Releases stores agent releases, release rollouts and per-agent release
// assignments. It is not (yet) part of Store: a backend that keeps
// releases implements it too.
type Releases interface {
	// CreateRelease stores a release; a version that exists fails with
	// ErrConflict.
	CreateRelease(ctx context.Context, r *Release) error
	ReleaseByVersion(ctx context.Context, version string) (*Release, error)
	// ListReleases lists releases, newest first.
	ListReleases(ctx context.Context) ([]*Release, error)

	// CreateReleaseRollout stores a release rollout (RowVersion becomes 1)
	// with its agents in one transaction.
	CreateReleaseRollout(ctx context.Context, r *ReleaseRollout, agents []*RolloutAgent) error
	ReleaseRolloutByID(ctx context.Context, id string) (*ReleaseRollout, error)
	// ListReleaseRollouts lists release rollouts, newest first.
	ListReleaseRollouts(ctx context.Context, f RolloutFilter) ([]*ReleaseRollout, error)
	// ListReleaseRolloutAgents lists a release rollout's agents by stage,
	// then agent id.
	ListReleaseRolloutAgents(ctx context.Context, rolloutID string) ([]*RolloutAgent, error)
	// ApplyReleaseRolloutChange writes ch in one transaction (ErrConflict
	// and nothing written when ch.Rollout's RowVersion is stale); on
	// success ch.Rollout.RowVersion is the new one.
	ApplyReleaseRolloutChange(ctx context.Context, ch *ReleaseRolloutChange) error

	// ReleaseAssignmentByAgent returns an agent's release assignment or
	// ErrNotFound.
	ReleaseAssignmentByAgent(ctx context.Context, agentID string) (*ReleaseAssignment, error)
	// ListReleaseAssignments lists a project's release assignments.
	ListReleaseAssignments(ctx context.Context, projectID string) ([]*ReleaseAssignment, error)
	// SetReleaseStatus records an agent's install report for version; it
	// changes nothing (and returns nil) when the agent's assignment is for
	// another version or there is none.
	SetReleaseStatus(ctx context.Context, agentID, version, status, errMsg string, at time.Time) error
}
