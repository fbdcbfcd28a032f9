package store

import (
	"context"
	"time"
)

// Role is what a user may do in an organization.
type Role string

// Roles, weakest first.
const (
	RoleNone   Role = ""
	RoleViewer Role = "viewer" // sees everything in the organization
	RoleEditor Role = "editor" // also creates tokens, rotates, rolls out
	RoleAdmin  Role = "admin"  // also manages the organization's members
)

// Rank orders roles: none < viewer < editor < admin. Unknown roles rank
// as none.
func (r Role) Rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleEditor:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Valid reports whether r is viewer, editor or admin.
func (r Role) Valid() bool { return r.Rank() > 0 }

// Org is an organization: it holds projects and has members.
type Org struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// User is a console user. Users sign in with an access key that is shown
// once; only its SHA-256 is stored.
type User struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	KeyHash     string     `json:"-"` // hex SHA-256 of the access key
	FleetAdmin  bool       `json:"fleetAdmin"`
	ReadOnly    bool       `json:"readOnly"` // never more than viewer anywhere
	CreatedBy   string     `json:"createdBy"`
	CreatedAt   time.Time  `json:"createdAt"`
	LastLoginAt *time.Time `json:"lastLoginAt,omitempty"`
}

// Membership gives a user a role in an organization.
type Membership struct {
	UserID string `json:"userId"`
	OrgID  string `json:"orgId"`
	Role   Role   `json:"role"`
}

// Session is a signed-in console session. ID is the hex SHA-256 of the
// cookie value, so a leaked database does not leak sessions.
type Session struct {
	ID        string    `json:"-"`
	CSRF      string    `json:"-"`
	Kind      string    `json:"kind"`    // "token" (admin JWT) or "user"
	Subject   string    `json:"subject"` // token jti or user id
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Users stores organizations, users, memberships and console sessions.
// It is separate from Store so that stores without it still serve the
// API for admin tokens.
type Users interface {
	CreateOrg(ctx context.Context, o *Org) error
	OrgByID(ctx context.Context, id string) (*Org, error)
	ListOrgs(ctx context.Context) ([]*Org, error)
	// SetProjectOrg puts a project into an organization (moving it).
	SetProjectOrg(ctx context.Context, projectID, orgID string) error
	// ProjectOrgs maps project ids to their organization ids; projects
	// never assigned are absent.
	ProjectOrgs(ctx context.Context) (map[string]string, error)

	CreateUser(ctx context.Context, u *User) error
	UserByID(ctx context.Context, id string) (*User, error)
	UserByKeyHash(ctx context.Context, hash string) (*User, error)
	ListUsers(ctx context.Context) ([]*User, error)
	// DeleteUser removes a user, its memberships and its sessions.
	DeleteUser(ctx context.Context, id string) error
	TouchUser(ctx context.Context, id string, at time.Time) error

	// SetMembership sets a user's role in an organization; RoleNone
	// removes the membership.
	SetMembership(ctx context.Context, m Membership) error
	// Memberships lists a user's memberships ("" lists all).
	Memberships(ctx context.Context, userID string) ([]Membership, error)

	CreateSession(ctx context.Context, s *Session) error
	// SessionByID returns a session that has not expired at now.
	SessionByID(ctx context.Context, id string, now time.Time) (*Session, error)
	DeleteSession(ctx context.Context, id string) error
}
