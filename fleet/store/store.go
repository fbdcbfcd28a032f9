package store

import (
	"context"
	"errors"
	"maps"
	"time"
)

// Errors returned by every Store implementation.
var (
	// ErrNotFound: no record with that key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a stale write (Version mismatch) or a duplicate key.
	ErrConflict = errors.New("conflict")
	// ErrExhausted: a bootstrap token has no uses left.
	ErrExhausted = errors.New("token has no uses left")
	// ErrDiskFull: a write found no room left on the store's disk; it
	// succeeds again once space is freed.
	ErrDiskFull = errors.New("fleet data disk is full")
)

// Project groups tokens, agents, configs and profiles.
type Project struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// TokenKind mirrors token.Kind without importing it.
type TokenKind string

// Token is the stored metadata of an issued token. The token itself is
// never stored.
type Token struct {
	ID         string            `json:"id"` // the jti
	ProjectID  string            `json:"projectId,omitempty"`
	Name       string            `json:"name"`
	Kind       TokenKind         `json:"kind"`
	Labels     map[string]string `json:"labels,omitempty"`
	AgentID    string            `json:"agentId,omitempty"` // agent credentials
	KeyID      string            `json:"keyId"`
	MaxUses    int               `json:"maxUses,omitempty"`
	Uses       int               `json:"uses"`
	ReadOnly   bool              `json:"readOnly,omitempty"`
	CreatedBy  string            `json:"createdBy,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	ExpiresAt  *time.Time        `json:"expiresAt,omitempty"`
	LastUsedAt *time.Time        `json:"lastUsedAt,omitempty"`
	RevokedAt  *time.Time        `json:"revokedAt,omitempty"`
}

// Agent is one enrolled agent and what the fleet last heard from it.
type Agent struct {
	ID           string            `json:"id"` // OpAMP instance uid (hex)
	ProjectID    string            `json:"projectId"`
	Hostname     string            `json:"hostname"`
	Platform     string            `json:"platform"` // kubernetes | systemd | host
	Version      string            `json:"version"`
	Labels       map[string]string `json:"labels"`
	CustomLabels map[string]string `json:"customLabels,omitempty"` // set in the console; merged into Labels
	Description  map[string]string `json:"description,omitempty"`  // identifying + non-identifying attributes
	EnrolledWith string            `json:"enrolledWith"`           // bootstrap token id

	Connected bool      `json:"connected"`
	LastSeen  time.Time `json:"lastSeen"`
	Healthy   bool      `json:"healthy"`
	Health    string    `json:"health,omitempty"` // status / last error

	CredentialID        string     `json:"credentialId"`
	CredentialExpiresAt *time.Time `json:"credentialExpiresAt,omitempty"`
	// CredentialHash is the hex SHA-256 (token.Sum) of the credential
	// CredentialID names, recorded when the fleet accepted it: a
	// reconnect with that exact token needs no signature check. Never
	// shown by the console.
	CredentialHash      string `json:"credentialHash,omitempty"`
	PendingCredentialID string `json:"pendingCredentialId,omitempty"`
	RotationStatus      string `json:"rotationStatus,omitempty"` // "", pending, rotated, failed
	RotationError       string `json:"rotationError,omitempty"`
	// Revoked is set when an operator revoked the agent: its bootstrap
	// token cannot enroll it again until it is re-admitted.
	Revoked bool `json:"revoked,omitempty"`

	ConfigHash      string `json:"configHash,omitempty"`   // hash the agent reports as applied or failed
	ConfigStatus    string `json:"configStatus,omitempty"` // APPLYING | APPLIED | FAILED
	ConfigError     string `json:"configError,omitempty"`
	EffectiveConfig string `json:"effectiveConfig,omitempty"`
	// EffectiveConfigHash, when set, says the effective config is the
	// canonical JSON of the project's config version of this hash, and
	// the record holds it by this reference (EffectiveConfig empty). The
	// console shows that version's YAML.
	EffectiveConfigHash string `json:"effectiveConfigHash,omitempty"`

	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Version of the row for optimistic concurrency: UpsertAgent with a
	// Version that is not the stored one fails with ErrConflict. 0 creates.
	RowVersion int64 `json:"rowVersion"`
}

// Clone returns a deep copy of a (maps and time pointers included).
func (a *Agent) Clone() *Agent {
	c := *a
	c.Labels = maps.Clone(a.Labels)
	c.CustomLabels = maps.Clone(a.CustomLabels)
	c.Description = maps.Clone(a.Description)
	if a.CredentialExpiresAt != nil {
		t := *a.CredentialExpiresAt
		c.CredentialExpiresAt = &t
	}
	return &c
}

// TokenLabelAttr prefixes the Agent.Description entries in which the
// fleet notes the labels an agent got from its bootstrap token (they win
// over the agent's own labels of the same name).
const TokenLabelAttr = "fleetprof.token_label."

// WellKnownLabels are the selector labels the fleet derives from what an
// agent reports (internal/describe). Agent.CustomLabels (set in the
// console) win over the agent's and its token's own labels in
// Agent.Labels, never over these.
var WellKnownLabels = []string{"platform", "node", "cluster", "version", "os", "kernel", "hostname", "arch"}

// AgentCredential is an agent's current credential as its record names
// it: the credential's jti and the hex SHA-256 the fleet recorded. It
// comes with the record itself as stored (the document DecodeAgent
// reads, at RowVersion), which a replica's start keeps for the agent's
// first report instead of reading it again then.
type AgentCredential struct {
	AgentID, CredentialID, CredentialHash string
	Record                                string
	RowVersion                            int64
}

// AgentFilter narrows ListAgents. Zero fields match everything.
type AgentFilter struct {
	ProjectID string
	Match     func(*Agent) bool // applied in Go after the SQL filter (label selectors)
	// Brief returns agents with only the fields that selectors and
	// rollouts judge by (BriefFields); the rest are zero. Decoding whole
	// records (descriptions, effective configs) was most of a rollout's
	// cost at 19,000 agents.
	Brief bool
	// InRollout keeps only the agents whose row in a rollout has the
	// given stage and state, read through the rollout's index instead of
	// listing every agent of the project (a rollout step at 19,000 agents
	// needs only those it still waits for).
	InRollout *RolloutSlice
	// NotInRollout keeps only the agents that have no row in the rollout
	// of this id (a completing rollout's late agents), filtered in the
	// store: their records are read, not every agent's.
	NotInRollout string
}

// RolloutSlice names the agents of one rollout in one stage and state.
type RolloutSlice struct {
	RolloutID string
	Stage     int
	State     string
}

// BriefFields lists the Agent fields a Brief listing fills.
var BriefFields = []string{"ID", "ProjectID", "RowVersion", "Labels", "Platform", "Hostname", "Version", "Connected", "Healthy", "Health", "ConfigHash", "ConfigStatus", "ConfigError"}

// AuditEntry records one admin action.
type AuditEntry struct {
	ID        int64     `json:"id"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	ProjectID string    `json:"projectId,omitempty"`
	Action    string    `json:"action"`
	Target    string    `json:"target,omitempty"`
	Result    string    `json:"result"` // ok | error: ...
}

// Projects stores projects.
type Projects interface {
	CreateProject(ctx context.Context, p *Project) error
	ProjectByID(ctx context.Context, id string) (*Project, error)
	ListProjects(ctx context.Context) ([]*Project, error)
}

// Tokens stores token metadata and revocations.
type Tokens interface {
	CreateToken(ctx context.Context, t *Token) error
	TokenByID(ctx context.Context, id string) (*Token, error)
	// ListTokens lists a project's tokens (all kinds when kind is "").
	ListTokens(ctx context.Context, projectID string, kind TokenKind) ([]*Token, error)
	// RevokeToken marks a token revoked; revoking twice is not an error.
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// RevokedSince lists ids revoked at or after t (for revocation caches).
	RevokedSince(ctx context.Context, t time.Time) ([]string, error)
	// UseToken counts one use of a token (bootstrap enrollments) and sets
	// last-used; it fails with ErrExhausted past MaxUses.
	UseToken(ctx context.Context, id string, at time.Time) error
	// TouchToken sets last-used without counting a use.
	TouchToken(ctx context.Context, id string, at time.Time) error
}

// Agents stores the inventory.
type Agents interface {
	// UpsertAgent creates (RowVersion 0) or updates an agent; on success
	// a.RowVersion holds the new version.
	UpsertAgent(ctx context.Context, a *Agent) error
	AgentByID(ctx context.Context, id string) (*Agent, error)
	ListAgents(ctx context.Context, f AgentFilter) ([]*Agent, error)
	// ListAgentCredentials lists the current credential of every agent
	// whose record holds its hash (Agent.CredentialHash), with the
	// record, for a fleet replica's start.
	ListAgentCredentials(ctx context.Context) ([]AgentCredential, error)
}

// Audit stores the audit log.
type Audit interface {
	AppendAudit(ctx context.Context, e *AuditEntry) error
	ListAudit(ctx context.Context, projectID string, limit int) ([]*AuditEntry, error)
}

// Store is everything the fleet keeps. All methods are goroutine-safe.
type Store interface {
	Projects
	Tokens
	Agents
	Audit
	Configs
	Rollouts
	Close() error
}
