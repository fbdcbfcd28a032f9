package console

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/google/uuid"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// registerConsole mounts the routes the web console adds to the API:
// sessions, organizations, users and members, and live events.
func (a *API) registerConsole(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/session", a.signIn)
	mux.HandleFunc("GET /api/v1/session", a.wrap(read, a.getSession))
	mux.HandleFunc("DELETE /api/v1/session", a.signOut)
	mux.HandleFunc("GET /api/v1/orgs", a.wrap(read, a.listOrgs))
	mux.HandleFunc("POST /api/v1/orgs", a.wrap(write, a.createOrg))
	mux.HandleFunc("GET /api/v1/orgs/{org}/members", a.wrap(read, a.listMembers))
	mux.HandleFunc("PUT /api/v1/orgs/{org}/members/{user}", a.wrap(write, a.setMember))
	mux.HandleFunc("GET /api/v1/users", a.wrap(read, a.listUsers))
	mux.HandleFunc("POST /api/v1/users", a.wrap(write, a.createUser))
	mux.HandleFunc("DELETE /api/v1/users/{user}", a.wrap(manage, a.deleteUser))
	mux.HandleFunc("PUT /api/v1/projects/{project}/org", a.wrap(manage, a.moveProject))
	mux.HandleFunc("GET /api/v1/projects/{project}/events", a.stream(read, a.events))
	mux.HandleFunc("POST /api/v1/projects/{project}/configs/validate", a.wrap(read, a.checkConfig))
}

func (a *API) needUsers() (store.Users, error) {
	us := a.users()
	if us == nil {
		return nil, fmt.Errorf("%w: this store keeps no organizations or users", ErrBadRequest)
	}
	return us, nil
}

// OrgInfo is an organization with the caller's role in it.
type OrgInfo struct {
	*store.Org
	Role store.Role `json:"role"`
}

func (a *API) listOrgs(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	os, err := us.ListOrgs(r.Context())
	if err != nil {
		return nil, err
	}
	c := callerFrom(r.Context())
	out := []*OrgInfo{}
	for _, o := range os {
		if role := c.roleIn(o.ID); role != store.RoleNone {
			out = append(out, &OrgInfo{Org: o, Role: role})
		}
	}
	return out, nil
}

func validName(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 100 {
		return "", fmt.Errorf("%w: %s: must be 1 to 100 characters", ErrBadRequest, field)
	}
	return s, nil
}

// createOrg creates an organization; a user who creates one becomes its
// admin.
func (a *API) createOrg(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	var body struct {
		Name string `json:"name"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Name, err = validName("name", body.Name); err != nil {
		return nil, err
	}
	c := callerFrom(r.Context())
	o := &store.Org{ID: uuid.NewString(), Name: body.Name, CreatedAt: a.o.Now().UTC()}
	err = us.CreateOrg(r.Context(), o)
	if err == nil && c.userID != "" {
		err = us.SetMembership(r.Context(), store.Membership{UserID: c.userID, OrgID: o.ID, Role: store.RoleAdmin})
	}
	a.audit(r, "", "org.create", body.Name, err)
	if err != nil {
		return nil, err
	}
	return &OrgInfo{Org: o, Role: store.RoleAdmin}, nil
}

// Member is a user's membership with the user's name.
type Member struct {
	store.Membership
	Name string `json:"name"`
}

func (a *API) orgRole(r *http.Request, org string, want store.Role) error {
	us, err := a.needUsers()
	if err != nil {
		return err
	}
	if _, err := us.OrgByID(r.Context(), org); err != nil {
		return err
	}
	role := callerFrom(r.Context()).roleIn(org)
	if role.Rank() < want.Rank() {
		return fmt.Errorf("%w: needs the %s role in this organization", ErrForbidden, want)
	}
	return nil
}

func (a *API) listMembers(r *http.Request) (any, error) {
	org := r.PathValue("org")
	if err := a.orgRole(r, org, store.RoleViewer); err != nil {
		return nil, err
	}
	us := a.users()
	ms, err := us.Memberships(r.Context(), "")
	if err != nil {
		return nil, err
	}
	users, err := us.ListUsers(r.Context())
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, u := range users {
		names[u.ID] = u.Name
	}
	out := []*Member{}
	for _, m := range ms {
		if m.OrgID == org {
			out = append(out, &Member{Membership: m, Name: names[m.UserID]})
		}
	}
	return out, nil
}

func (a *API) setMember(r *http.Request) (any, error) {
	org, user := r.PathValue("org"), r.PathValue("user")
	if err := a.orgRole(r, org, store.RoleAdmin); err != nil {
		return nil, err
	}
	var body struct {
		Role store.Role `json:"role"` // "" removes
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Role != store.RoleNone && !body.Role.Valid() {
		return nil, fmt.Errorf("%w: role: %q is not admin, editor, viewer or empty", ErrBadRequest, body.Role)
	}
	m := store.Membership{UserID: user, OrgID: org, Role: body.Role}
	err := a.users().SetMembership(r.Context(), m)
	a.audit(r, "", "org.member", org+" "+user+"="+string(body.Role), err)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// UserInfo is a user with its memberships.
type UserInfo struct {
	*store.User
	Memberships []store.Membership `json:"memberships"`
}

// listUsers lists users for fleet admins, and the members of their
// organizations for organization admins.
func (a *API) listUsers(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	users, err := us.ListUsers(r.Context())
	if err != nil {
		return nil, err
	}
	ms, err := us.Memberships(r.Context(), "")
	if err != nil {
		return nil, err
	}
	c := callerFrom(r.Context())
	byUser := map[string][]store.Membership{}
	for _, m := range ms {
		byUser[m.UserID] = append(byUser[m.UserID], m)
	}
	out := []*UserInfo{}
	for _, u := range users {
		info := &UserInfo{User: u, Memberships: []store.Membership{}}
		visible := c.fleetAdmin
		for _, m := range byUser[u.ID] {
			if c.fleetAdmin || c.roleIn(m.OrgID) == store.RoleAdmin {
				visible = true
				info.Memberships = append(info.Memberships, m)
			}
		}
		if visible {
			out = append(out, info)
		}
	}
	return out, nil
}

// CreateUserRequest is the body of POST /api/v1/users.
type CreateUserRequest struct {
	Name       string     `json:"name"`
	OrgID      string     `json:"orgId,omitempty"`
	Role       store.Role `json:"role,omitempty"`
	FleetAdmin bool       `json:"fleetAdmin,omitempty"`
	ReadOnly   bool       `json:"readOnly,omitempty"`
}

// CreatedUser is returned once, with the user's access key.
type CreatedUser struct {
	Key  string    `json:"key"`
	User *UserInfo `json:"user"`
}

// createUser creates a user with an access key, shown once. Fleet admins
// may create anyone; organization admins create members of their
// organization.
func (a *API) createUser(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	var body CreateUserRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	c := callerFrom(r.Context())
	if body.FleetAdmin && !c.canManage() {
		return nil, fmt.Errorf("%w: only fleet admins create fleet admins", ErrForbidden)
	}
	if body.OrgID == "" && !body.FleetAdmin {
		return nil, fmt.Errorf("%w: orgId: a user needs an organization (or fleetAdmin)", ErrBadRequest)
	}
	if body.OrgID != "" {
		if !body.Role.Valid() {
			return nil, fmt.Errorf("%w: role: %q is not admin, editor or viewer", ErrBadRequest, body.Role)
		}
		if err := a.orgRole(r, body.OrgID, store.RoleAdmin); err != nil {
			return nil, err
		}
	}
	if body.Name, err = validName("name", body.Name); err != nil {
		return nil, err
	}
	key := UserKeyPrefix + randomString(32)
	u := &store.User{
		ID: uuid.NewString(), Name: body.Name, KeyHash: hashSecret(key), FleetAdmin: body.FleetAdmin,
		ReadOnly: body.ReadOnly, CreatedBy: c.Name, CreatedAt: a.o.Now().UTC(),
	}
	err = us.CreateUser(r.Context(), u)
	info := &UserInfo{User: u, Memberships: []store.Membership{}}
	if err == nil && body.OrgID != "" {
		m := store.Membership{UserID: u.ID, OrgID: body.OrgID, Role: body.Role}
		err = us.SetMembership(r.Context(), m)
		info.Memberships = append(info.Memberships, m)
	}
	a.audit(r, "", "user.create", fmt.Sprintf("%s (org %s, role %s, fleetAdmin %t, readOnly %t)", body.Name, body.OrgID, body.Role, body.FleetAdmin, body.ReadOnly), err)
	if err != nil {
		return nil, err
	}
	return &CreatedUser{Key: key, User: info}, nil
}

func (a *API) deleteUser(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	id := r.PathValue("user")
	err = us.DeleteUser(r.Context(), id)
	a.audit(r, "", "user.delete", id, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": id, "status": "deleted"}, nil
}

func (a *API) moveProject(r *http.Request) (any, error) {
	us, err := a.needUsers()
	if err != nil {
		return nil, err
	}
	var body struct {
		OrgID string `json:"orgId"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	p := r.PathValue("project")
	err = us.SetProjectOrg(r.Context(), p, body.OrgID)
	a.audit(r, p, "project.move", body.OrgID, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": p, "orgId": body.OrgID}, nil
}
