package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Console sessions: signing in with an admin token or a user access key
// gives an HttpOnly, SameSite=Strict cookie; requests that change state
// must also carry the session's CSRF token in the X-CSRF-Token header.
const (
	// SessionCookie is the name of the console session cookie.
	SessionCookie = "fleetprof_session"
	// CSRFHeader carries the session's CSRF token on unsafe requests.
	CSRFHeader = "X-CSRF-Token"
	// UserKeyPrefix starts every user access key.
	UserKeyPrefix = "fpu_"
	sessionTTL    = 12 * time.Hour
)

// caller is who a request acts as and what it may do.
type caller struct {
	*auth.Principal
	// fleetAdmin callers (admin tokens, fleet-admin users) hold every
	// organization, as admin, or as viewer when read-only.
	fleetAdmin bool
	roles      map[string]store.Role // org id → role, for users
	session    *store.Session        // nil for bearer requests
	userID     string
}

type callerKey struct{}

func callerFrom(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	return c
}

// roleIn is the caller's effective role in an organization.
func (c *caller) roleIn(orgID string) store.Role {
	var r store.Role
	switch {
	case c.fleetAdmin:
		r = store.RoleAdmin
	case orgID != "":
		r = c.roles[orgID]
	}
	if c.ReadOnly && r.Rank() > store.RoleViewer.Rank() {
		r = store.RoleViewer
	}
	return r
}

// canManage reports whether the caller may manage users and organizations
// fleet-wide.
func (c *caller) canManage() bool { return c.fleetAdmin && !c.ReadOnly }

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// users returns the user store, or nil when the store has none.
func (a *API) users() store.Users {
	u, _ := a.o.Store.(store.Users)
	return u
}

// authenticate resolves the caller from the bearer token or, without an
// Authorization header, from the session cookie.
func (a *API) authenticate(r *http.Request) (*caller, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		raw, ok := auth.Bearer(h)
		if !ok {
			return nil, fmt.Errorf("%w: malformed Authorization header", ErrUnauthorized)
		}
		if strings.HasPrefix(raw, UserKeyPrefix) {
			return a.userCaller(r.Context(), raw, nil)
		}
		p, err := a.o.Auth.Admin(r.Context(), raw)
		if errors.Is(err, token.ErrScope) {
			// A valid token of another kind is no admin credential at all.
			return nil, fmt.Errorf("%w: not an admin token", ErrUnauthorized)
		}
		if err != nil {
			return nil, err
		}
		return &caller{Principal: p, fleetAdmin: true}, nil
	}
	ck, err := r.Cookie(SessionCookie)
	if err != nil || ck.Value == "" {
		return nil, fmt.Errorf("%w: missing bearer token or session", ErrUnauthorized)
	}
	us := a.users()
	if us == nil {
		return nil, fmt.Errorf("%w: this store keeps no sessions", ErrUnauthorized)
	}
	se, err := us.SessionByID(r.Context(), hashSecret(ck.Value), a.o.Now())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: session expired or signed out", ErrUnauthorized)
	}
	if err != nil {
		return nil, err
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		got := r.Header.Get(CSRFHeader)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(se.CSRF)) != 1 {
			return nil, fmt.Errorf("%w: missing or wrong %s header", ErrForbidden, CSRFHeader)
		}
	}
	switch se.Kind {
	case "token":
		if a.o.Auth.IsRevoked(se.Subject) {
			return nil, fmt.Errorf("%w: the admin token of this session was deleted", ErrUnauthorized)
		}
		t, err := a.o.Store.TokenByID(r.Context(), se.Subject)
		if err != nil {
			return nil, fmt.Errorf("%w: the admin token of this session is gone", ErrUnauthorized)
		}
		return &caller{Principal: &auth.Principal{TokenID: t.ID, Name: t.Name, ReadOnly: t.ReadOnly}, fleetAdmin: true, session: se}, nil
	case "user":
		return a.userCaller(r.Context(), "", se)
	}
	return nil, fmt.Errorf("%w: unknown session kind", ErrUnauthorized)
}

// userCaller loads a user by access key (key != "") or by session.
func (a *API) userCaller(ctx context.Context, key string, se *store.Session) (*caller, error) {
	us := a.users()
	if us == nil {
		return nil, fmt.Errorf("%w: this store keeps no users", ErrUnauthorized)
	}
	var u *store.User
	var err error
	if se != nil {
		u, err = us.UserByID(ctx, se.Subject)
	} else {
		u, err = us.UserByKeyHash(ctx, hashSecret(key))
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: unknown or deleted user", ErrUnauthorized)
	}
	if err != nil {
		return nil, err
	}
	ms, err := us.Memberships(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	c := &caller{
		Principal:  &auth.Principal{Name: "user:" + u.Name, ReadOnly: u.ReadOnly},
		fleetAdmin: u.FleetAdmin, roles: map[string]store.Role{}, session: se, userID: u.ID,
	}
	for _, m := range ms {
		c.roles[m.OrgID] = m.Role
	}
	return c, nil
}

// SessionInfo describes the signed-in caller to the console.
type SessionInfo struct {
	Name       string                `json:"name"`
	Kind       string                `json:"kind"` // token | user
	FleetAdmin bool                  `json:"fleetAdmin"`
	ReadOnly   bool                  `json:"readOnly"`
	Roles      map[string]store.Role `json:"roles"`
	CSRF       string                `json:"csrf,omitempty"`
	FleetURL   string                `json:"fleetUrl"`
	ExpiresAt  *time.Time            `json:"expiresAt,omitempty"`
}

func (a *API) sessionInfo(c *caller) *SessionInfo {
	info := &SessionInfo{Name: c.Name, Kind: "token", FleetAdmin: c.fleetAdmin, ReadOnly: c.ReadOnly, Roles: c.roles, FleetURL: a.o.FleetURL}
	if c.userID != "" {
		info.Kind = "user"
	}
	if info.Roles == nil {
		info.Roles = map[string]store.Role{}
	}
	if c.session != nil {
		info.CSRF = c.session.CSRF
		e := c.session.ExpiresAt
		info.ExpiresAt = &e
	}
	return info
}

// signIn exchanges an admin token or a user access key for a session
// cookie. It is the one console route without prior authentication.
func (a *API) signIn(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Token string `json:"token"`
	}
	if err := decode(r, &body); err != nil {
		WriteError(w, a.log, r, err)
		return
	}
	raw := strings.TrimSpace(body.Token)
	if raw == "" {
		WriteError(w, a.log, r, fmt.Errorf("%w: token: paste the admin token or your access key", ErrBadRequest))
		return
	}
	us := a.users()
	if us == nil {
		WriteError(w, a.log, r, fmt.Errorf("%w: this store keeps no sessions", ErrBadRequest))
		return
	}
	now := a.o.Now().UTC()
	se := &store.Session{CSRF: randomString(32), CreatedAt: now, ExpiresAt: now.Add(sessionTTL)}
	var c *caller
	var err error
	if strings.HasPrefix(raw, UserKeyPrefix) {
		c, err = a.userCaller(r.Context(), raw, nil)
		if err == nil {
			se.Kind, se.Subject, se.Name = "user", c.userID, c.Name
			if terr := us.TouchUser(r.Context(), c.userID, now); terr != nil {
				a.log.Warn("record sign-in", zap.Error(terr))
			}
		}
	} else {
		var p *auth.Principal
		p, err = a.o.Auth.Admin(r.Context(), raw)
		if errors.Is(err, token.ErrScope) {
			err = fmt.Errorf("%w: not an admin token", ErrUnauthorized)
		}
		if err == nil {
			c = &caller{Principal: p, fleetAdmin: true}
			se.Kind, se.Subject, se.Name = "token", p.TokenID, p.Name
		}
	}
	if err != nil {
		a.auditAs(r, "unknown", "", "session.signin", "", err)
		WriteError(w, a.log, r, err)
		return
	}
	cookie := randomString(32)
	se.ID = hashSecret(cookie)
	if err := us.CreateSession(r.Context(), se); err != nil {
		WriteError(w, a.log, r, err)
		return
	}
	c.session = se
	a.auditAs(r, c.Name, "", "session.signin", se.Kind, nil)
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: cookie, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, Expires: se.ExpiresAt, MaxAge: int(sessionTTL / time.Second),
	})
	WriteJSON(w, http.StatusCreated, Envelope{Data: a.sessionInfo(c)})
}

func (a *API) getSession(r *http.Request) (any, error) {
	return a.sessionInfo(callerFrom(r.Context())), nil
}

// signOut ends the cookie session (a no-op for bearer callers).
func (a *API) signOut(w http.ResponseWriter, r *http.Request) {
	c, err := a.authenticate(r)
	if err != nil {
		WriteError(w, a.log, r, err)
		return
	}
	if c.session != nil {
		if err := a.users().DeleteSession(r.Context(), c.session.ID); err != nil {
			WriteError(w, a.log, r, err)
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	WriteJSON(w, http.StatusOK, Envelope{Data: map[string]string{"status": "signed out"}})
}
