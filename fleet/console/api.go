package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/selector"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Errors that handlers return; Status maps them to HTTP codes.
var (
	ErrBadRequest   = errors.New("bad request")
	ErrUnauthorized = errors.New("unauthenticated")
	ErrForbidden    = errors.New("permission denied")
)

// Fleet is what the API needs from the OpAMP side.
type Fleet interface {
	RotateCredential(ctx context.Context, agentID string) error
}

// Options configures the API.
type Options struct {
	Store  store.Store
	Auth   *auth.Authenticator
	Fleet  Fleet
	Logger *zap.Logger
	// FleetURL is shown in agent commands.
	FleetURL string
	// Bus, if set, wakes the live events of a project as soon as any
	// replica publishes it on store.TopicChanged; the events are re-read
	// from the store every second either way.
	Bus store.Bus
	Now func() time.Time
}

// API is the JSON API under /api/v1.
type API struct {
	o   Options
	log *zap.Logger

	sourcesMu sync.RWMutex
	sources   map[string]EventSource // live event topics beyond "agents"
}

// New returns the API.
func New(o Options) *API {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &API{o: o, log: o.Logger}
}

type ctxKey struct{}

// PrincipalFrom returns the caller of a request that passed authentication.
func PrincipalFrom(ctx context.Context) *auth.Principal {
	p, _ := ctx.Value(ctxKey{}).(*auth.Principal)
	return p
}

type apiFunc func(r *http.Request) (any, error)

// Envelope is the one JSON shape of every API response.
type Envelope struct {
	Data  any        `json:"data,omitempty"`
	Error *ErrorBody `json:"error,omitempty"`
}

// ErrorBody carries an error code and a message for people.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Status maps an error to its HTTP status and code word. It is the one
// place that does so; it never looks at error text.
func Status(err error) (int, string) {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, "invalid_argument"
	case errors.Is(err, token.ErrScope), errors.Is(err, ErrForbidden):
		return http.StatusForbidden, "permission_denied"
	case errors.Is(err, ErrUnauthorized), errors.Is(err, token.ErrMalformed), errors.Is(err, token.ErrAlgorithm),
		errors.Is(err, token.ErrUnknownKey), errors.Is(err, token.ErrSignature), errors.Is(err, token.ErrExpired),
		errors.Is(err, token.ErrRevoked), errors.Is(err, token.ErrUnknownProject):
		return http.StatusUnauthorized, "unauthenticated"
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrExhausted):
		return http.StatusConflict, "conflict"
	case errors.Is(err, store.ErrDiskFull), errors.Is(err, syscall.ENOSPC):
		return http.StatusInsufficientStorage, "insufficient_storage"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "unavailable"
	}
	return http.StatusInternalServerError, "internal"
}

// WriteJSON writes one envelope.
func WriteJSON(w http.ResponseWriter, code int, v Envelope) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes err as an envelope with its mapped status.
func WriteError(w http.ResponseWriter, log *zap.Logger, r *http.Request, err error) {
	code, word := Status(err)
	msg := err.Error()
	if code >= 500 {
		log.Error("api error", zap.String("path", r.URL.Path), zap.Error(err))
		if code == http.StatusInsufficientStorage && !errors.Is(err, store.ErrDiskFull) {
			msg = "fleet data disk is full: " + msg
		}
		if code == http.StatusInternalServerError {
			msg = "internal error"
		}
	} else {
		log.Debug("api refused", zap.String("path", r.URL.Path), zap.Int("status", code), zap.Error(err))
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fleetprof"`)
	}
	WriteJSON(w, code, Envelope{Error: &ErrorBody{Code: word, Message: msg}})
}

// access is what a route needs from its caller.
type access int

const (
	read   access = iota // viewer of the path's project (or any caller)
	write                // editor of the path's project (or not read-only)
	manage               // fleet admin: users and organizations
)

// projectOrg returns the organization a project belongs to ("" when it
// was never put into one: then only fleet admins see it).
func (a *API) projectOrg(ctx context.Context, projectID string) (string, error) {
	us := a.users()
	if us == nil {
		return "", nil
	}
	m, err := us.ProjectOrgs(ctx)
	if err != nil {
		return "", err
	}
	return m[projectID], nil
}

// authorize checks the caller in r's context against need for a project
// ("" for routes without one).
func (a *API) authorize(r *http.Request, projectID string, need access) error {
	c := callerFrom(r.Context())
	if c == nil {
		return fmt.Errorf("%w: not signed in", ErrUnauthorized)
	}
	switch {
	case need == manage && !c.canManage():
		return fmt.Errorf("%w: needs a fleet admin", ErrForbidden)
	case need == write && c.ReadOnly:
		return fmt.Errorf("%w: read-only caller", ErrForbidden)
	}
	if c.fleetAdmin {
		return nil
	}
	if projectID == "" {
		var err error
		if projectID, err = a.projectOfRoute(r); err != nil || projectID == "" {
			return err
		}
	}
	org, err := a.projectOrg(r.Context(), projectID)
	if err != nil {
		return err
	}
	role := c.roleIn(org)
	want := store.RoleViewer
	if need != read {
		want = store.RoleEditor
	}
	if role.Rank() < want.Rank() {
		if role == store.RoleNone {
			return fmt.Errorf("%w: no access to project %q", ErrForbidden, projectID)
		}
		return fmt.Errorf("%w: role %s in this organization cannot do this (needs %s)", ErrForbidden, role, want)
	}
	return nil
}

// userRoutes are the routes without a {project} that users (not only
// fleet admins) may call; their handlers filter or check by themselves.
var userRoutes = map[string]bool{
	"GET /api/v1/whoami":                    true,
	"GET /api/v1/projects":                  true,
	"POST /api/v1/projects":                 true,
	"GET /api/v1/agents":                    true,
	"GET /api/v1/audit":                     true,
	"GET /api/v1/session":                   true,
	"GET /api/v1/orgs":                      true,
	"POST /api/v1/orgs":                     true,
	"GET /api/v1/orgs/{org}/members":        true,
	"PUT /api/v1/orgs/{org}/members/{user}": true,
	"GET /api/v1/users":                     true,
	"POST /api/v1/users":                    true,
	"GET /api/v1/releases":                  true, // release metadata, for the Versions page
	"GET /api/v1/rollouts/{id}":             true,
	"POST /api/v1/rollouts/{id}/pause":      true,
	"POST /api/v1/rollouts/{id}/resume":     true,
	"POST /api/v1/rollouts/{id}/rollback":   true,
}

// projectOfRoute finds the project a route without {project} acts on,
// for callers that are not fleet admins: "" with nil for routes users
// may call whose handlers check by themselves, and ErrForbidden for
// fleet-wide routes (signing keys and the like).
func (a *API) projectOfRoute(r *http.Request) (string, error) {
	if !userRoutes[r.Pattern] {
		return "", fmt.Errorf("%w: needs a fleet admin", ErrForbidden)
	}
	if strings.HasPrefix(r.Pattern, "GET /api/v1/rollouts/{id}") || strings.HasPrefix(r.Pattern, "POST /api/v1/rollouts/{id}") {
		ro, ok := a.o.Store.(interface {
			RolloutByID(ctx context.Context, id string) (*store.Rollout, error)
		})
		if !ok {
			return "", fmt.Errorf("%w: this store keeps no rollouts", ErrForbidden)
		}
		rr, err := ro.RolloutByID(r.Context(), r.PathValue("id"))
		if err != nil {
			return "", err
		}
		return rr.ProjectID, nil
	}
	return "", nil
}

// Authorize checks that the caller of r (already passed through the API's
// wrapper) may read (write false) or change (write true) a project. Route
// handlers whose paths carry no {project} (e.g. rollouts by id) call it
// once they know the project.
func (a *API) Authorize(r *http.Request, projectID string, change bool) error {
	need := read
	if change {
		need = write
	}
	return a.authorize(r, projectID, need)
}

// AuthorizeProject authenticates r (bearer or session) and checks that
// its caller may read projectID. Errors wrap token.ErrScope for "known
// but not allowed", so other packages' routes (profiles) answer 403.
func (a *API) AuthorizeProject(r *http.Request, projectID string) error {
	c, err := a.authenticate(r)
	if err != nil {
		return err
	}
	r2 := r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
	if err := a.authorize(r2, projectID, read); err != nil {
		if errors.Is(err, ErrForbidden) {
			return fmt.Errorf("%w: %w", token.ErrScope, err)
		}
		return err
	}
	return nil
}

// admit authenticates and authorizes r; on failure it writes the error
// and returns false.
func (a *API) admit(need access, w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	c, err := a.authenticate(r)
	if err != nil {
		WriteError(w, a.log, r, err)
		return r, false
	}
	ctx := context.WithValue(r.Context(), ctxKey{}, c.Principal)
	r = r.WithContext(context.WithValue(ctx, callerKey{}, c))
	if err := a.authorize(r, r.PathValue("project"), need); err != nil {
		WriteError(w, a.log, r, err)
		return r, false
	}
	return r, true
}

// stream is wrap for handlers that write their own response (SSE).
func (a *API) stream(need access, f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r, ok := a.admit(need, w, r); ok {
			f(w, r)
		}
	}
}

// wrap authenticates, authorizes, runs f and writes its result.
func (a *API) wrap(need access, f apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r, ok := a.admit(need, w, r)
		if !ok {
			return
		}
		v, err := f(r)
		if err != nil {
			WriteError(w, a.log, r, err)
			return
		}
		code := http.StatusOK
		if r.Method == http.MethodPost {
			code = http.StatusCreated
		}
		WriteJSON(w, code, Envelope{Data: v})
	}
}

// Register mounts the API routes.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/whoami", a.wrap(read, a.whoami))
	mux.HandleFunc("POST /api/v1/projects", a.wrap(write, a.createProject))
	mux.HandleFunc("GET /api/v1/projects", a.wrap(read, a.listProjects))
	mux.HandleFunc("GET /api/v1/projects/{project}", a.wrap(read, a.getProject))
	mux.HandleFunc("POST /api/v1/projects/{project}/tokens", a.wrap(write, a.createToken))
	mux.HandleFunc("GET /api/v1/projects/{project}/tokens", a.wrap(read, a.listTokens))
	mux.HandleFunc("DELETE /api/v1/projects/{project}/tokens/{id}", a.wrap(write, a.deleteToken))
	mux.HandleFunc("GET /api/v1/agents", a.wrap(read, a.listAgents))
	mux.HandleFunc("GET /api/v1/projects/{project}/agents", a.wrap(read, a.listAgents))
	mux.HandleFunc("GET /api/v1/projects/{project}/agents/{id}", a.wrap(read, a.getAgent))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/{id}/revoke", a.wrap(write, a.revokeAgent))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/{id}/rotate", a.wrap(write, a.rotateAgent))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/rotate-credentials", a.wrap(write, a.rotateBulk))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/labels", a.wrap(write, a.setLabels))
	mux.HandleFunc("GET /api/v1/audit", a.wrap(read, a.listAudit))
	a.registerCredentials(mux)
	a.registerConsole(mux)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %w", ErrBadRequest, err)
	}
	return nil
}

// audit records an admin action and its result.
func (a *API) audit(r *http.Request, project, action, target string, err error) {
	actor := "unknown"
	if p := PrincipalFrom(r.Context()); p != nil {
		actor = p.Name
	}
	a.auditAs(r, actor, project, action, target, err)
}

// auditAs records an action of a named actor.
func (a *API) auditAs(r *http.Request, actor, project, action, target string, err error) {
	res := "ok"
	if err != nil {
		res = "error: " + err.Error()
	}
	if aerr := a.o.Store.AppendAudit(context.WithoutCancel(r.Context()), &store.AuditEntry{
		Time: a.o.Now().UTC(), Actor: actor, ProjectID: project, Action: action, Target: target, Result: res,
	}); aerr != nil {
		a.log.Error("write audit log", zap.Error(aerr))
	}
}

func (a *API) whoami(r *http.Request) (any, error) { return PrincipalFrom(r.Context()), nil }

func (a *API) createProject(r *http.Request) (any, error) {
	var body struct {
		Name  string `json:"name"`
		OrgID string `json:"orgId,omitempty"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	body.Name = strings.TrimSpace(body.Name)
	if body.Name == "" || len(body.Name) > 100 {
		return nil, fmt.Errorf("%w: name: must be 1 to 100 characters", ErrBadRequest)
	}
	c := callerFrom(r.Context())
	if body.OrgID != "" || !c.fleetAdmin {
		if body.OrgID == "" {
			return nil, fmt.Errorf("%w: orgId: choose the organization of the project", ErrBadRequest)
		}
		if a.users() == nil {
			return nil, fmt.Errorf("%w: orgId: this store keeps no organizations", ErrBadRequest)
		}
		if _, err := a.users().OrgByID(r.Context(), body.OrgID); err != nil {
			return nil, err
		}
		if c.roleIn(body.OrgID).Rank() < store.RoleEditor.Rank() {
			return nil, fmt.Errorf("%w: creating a project needs the editor or admin role in its organization", ErrForbidden)
		}
	}
	p := &store.Project{ID: uuid.NewString(), Name: body.Name, CreatedAt: a.o.Now().UTC()}
	err := a.o.Store.CreateProject(r.Context(), p)
	if err == nil && body.OrgID != "" {
		err = a.users().SetProjectOrg(r.Context(), p.ID, body.OrgID)
	}
	a.audit(r, p.ID, "project.create", body.Name, err)
	if err != nil {
		return nil, err
	}
	return &ProjectInfo{Project: p, OrgID: body.OrgID}, nil
}

// ProjectInfo is a project with its organization.
type ProjectInfo struct {
	*store.Project
	OrgID string `json:"orgId,omitempty"`
}

// visibleProjects lists the projects the caller may read, with their
// organizations.
func (a *API) visibleProjects(r *http.Request) ([]*ProjectInfo, error) {
	ps, err := a.o.Store.ListProjects(r.Context())
	if err != nil {
		return nil, err
	}
	orgs := map[string]string{}
	if us := a.users(); us != nil {
		if orgs, err = us.ProjectOrgs(r.Context()); err != nil {
			return nil, err
		}
	}
	c := callerFrom(r.Context())
	out := []*ProjectInfo{}
	for _, p := range ps {
		if c.fleetAdmin || c.roleIn(orgs[p.ID]) != store.RoleNone {
			out = append(out, &ProjectInfo{Project: p, OrgID: orgs[p.ID]})
		}
	}
	return out, nil
}

func (a *API) listProjects(r *http.Request) (any, error) {
	ps, err := a.visibleProjects(r)
	if err != nil {
		return nil, err
	}
	if org := r.URL.Query().Get("org"); org != "" {
		kept := []*ProjectInfo{}
		for _, p := range ps {
			if p.OrgID == org {
				kept = append(kept, p)
			}
		}
		ps = kept
	}
	return ps, nil
}

func (a *API) project(r *http.Request) (*store.Project, error) {
	return a.o.Store.ProjectByID(r.Context(), r.PathValue("project"))
}

func (a *API) getProject(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	org, err := a.projectOrg(r.Context(), p.ID)
	if err != nil {
		return nil, err
	}
	return &ProjectInfo{Project: p, OrgID: org}, nil
}

// CreateTokenRequest is the body of POST .../tokens.
type CreateTokenRequest struct {
	Name    string            `json:"name"`
	Scope   string            `json:"scope"` // enroll | write-profiles
	TTL     string            `json:"ttl,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	MaxUses int               `json:"maxUses,omitempty"`
}

// CreatedToken is returned once, with the token itself.
type CreatedToken struct {
	Token string       `json:"token"`
	Info  *store.Token `json:"info"`
}

// ParseTTL reads a duration, also in days ("30d").
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%w: ttl: %q is not a duration", ErrBadRequest, s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%w: ttl: %q is not a positive duration (e.g. 24h, 30d)", ErrBadRequest, s)
	}
	return d, nil
}

func (a *API) createToken(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	var body CreateTokenRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	var kind token.Kind
	switch body.Scope {
	case "enroll":
		kind = token.KindBootstrap
	case "write-profiles", "":
		kind = token.KindProject
	default:
		return nil, fmt.Errorf("%w: scope: %q is not enroll or write-profiles", ErrBadRequest, body.Scope)
	}
	body.Name = strings.TrimSpace(body.Name)
	if body.Name == "" || len(body.Name) > 100 {
		return nil, fmt.Errorf("%w: name: must be 1 to 100 characters", ErrBadRequest)
	}
	ttl, err := ParseTTL(body.TTL)
	if err != nil {
		return nil, err
	}
	if body.MaxUses < 0 {
		return nil, fmt.Errorf("%w: maxUses: must not be negative", ErrBadRequest)
	}
	if len(body.Labels) > 0 && kind != token.KindBootstrap {
		return nil, fmt.Errorf("%w: labels: only enroll tokens carry labels", ErrBadRequest)
	}
	for k, v := range body.Labels {
		if err := validLabel(k, v); err != nil {
			return nil, err
		}
	}
	raw, t, err := a.o.Auth.Issue(r.Context(), auth.IssueRequest{
		Kind: kind, ProjectID: p.ID, Name: body.Name, TTL: ttl, Labels: body.Labels, MaxUses: body.MaxUses,
		CreatedBy: PrincipalFrom(r.Context()).Name,
	})
	a.audit(r, p.ID, "token.create", body.Name+" ("+body.Scope+")", err)
	if err != nil {
		return nil, err
	}
	return &CreatedToken{Token: raw, Info: t}, nil
}

func validLabel(k, v string) error {
	if k == "" || len(k) > 63 || len(v) > 253 {
		return fmt.Errorf("%w: labels: %q: name must be 1-63 characters and value at most 253", ErrBadRequest, k)
	}
	for _, c := range k {
		if !(c == '_' || c == '-' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("%w: labels: %q: name may hold letters, digits, '_', '-' and '.'", ErrBadRequest, k)
		}
	}
	return nil
}

func (a *API) listTokens(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	kind := store.TokenKind(r.URL.Query().Get("kind"))
	ts, err := a.o.Store.ListTokens(r.Context(), p.ID, kind)
	if err != nil {
		return nil, err
	}
	out := []*store.Token{}
	for _, t := range ts {
		// Agent credentials are listed on their agent, not here, unless asked.
		if t.Kind == store.TokenKind(token.KindAgent) && kind == "" {
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

func (a *API) deleteToken(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	t, err := a.o.Store.TokenByID(r.Context(), id)
	if err == nil && t.ProjectID != p.ID {
		err = fmt.Errorf("token %q: %w", id, store.ErrNotFound)
	}
	if err == nil {
		err = a.o.Auth.Revoke(r.Context(), id)
	}
	a.audit(r, p.ID, "token.delete", id, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": id, "status": "revoked"}, nil
}

func (a *API) selected(r *http.Request, projectID, sel string) ([]*store.Agent, error) {
	s, err := selector.Parse(sel)
	if err != nil {
		return nil, fmt.Errorf("%w: selector: %w", ErrBadRequest, err)
	}
	return a.o.Store.ListAgents(r.Context(), store.AgentFilter{ProjectID: projectID, Match: func(ag *store.Agent) bool {
		return s.Matches(ag.Labels)
	}})
}

func (a *API) listAgents(r *http.Request) (any, error) {
	project := r.PathValue("project")
	if project == "" {
		project = r.URL.Query().Get("project")
		if project != "" {
			if err := a.authorize(r, project, read); err != nil {
				return nil, err
			}
		}
	}
	if project != "" {
		if _, err := a.o.Store.ProjectByID(r.Context(), project); err != nil {
			return nil, err
		}
	}
	agents, err := a.selected(r, project, r.URL.Query().Get("selector"))
	if err != nil {
		return nil, err
	}
	if project == "" && !callerFrom(r.Context()).fleetAdmin {
		// Users see the agents of their organizations' projects only.
		ps, err := a.visibleProjects(r)
		if err != nil {
			return nil, err
		}
		ok := map[string]bool{}
		for _, p := range ps {
			ok[p.ID] = true
		}
		kept := agents[:0]
		for _, ag := range agents {
			if ok[ag.ProjectID] {
				kept = append(kept, ag)
			}
		}
		agents = kept
	}
	counts := map[string]int{}
	for _, ag := range agents {
		counts[AgentState(ag)]++
	}
	if st := r.URL.Query().Get("status"); st != "" {
		kept := agents[:0]
		for _, ag := range agents {
			if AgentState(ag) == st {
				kept = append(kept, ag)
			}
		}
		agents = kept
	}
	if err := sortAgents(agents, r.URL.Query().Get("sort")); err != nil {
		return nil, err
	}
	if agents == nil {
		agents = []*store.Agent{}
	}
	a.shown(r.Context(), agents...)
	q := r.URL.Query()
	if !q.Has("limit") && !q.Has("offset") {
		return agents, nil
	}
	// The paged form: one page plus the totals the console shows.
	limit, offset := 50, 0
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 || limit > 1000 {
			return nil, fmt.Errorf("%w: limit: %q is not 0 to 1000", ErrBadRequest, v)
		}
	}
	if v := q.Get("offset"); v != "" {
		if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
			return nil, fmt.Errorf("%w: offset: %q is not a non-negative number", ErrBadRequest, v)
		}
	}
	page := &AgentPage{Total: len(agents), Offset: offset, Limit: limit, Counts: counts, Items: []*AgentRow{}}
	for i := offset; i < len(agents) && i < offset+limit; i++ {
		page.Items = append(page.Items, &AgentRow{Agent: agents[i], State: AgentState(agents[i])})
	}
	return page, nil
}

// AgentPage is one page of agents (GET .../agents?limit=N&offset=M).
type AgentPage struct {
	Items  []*AgentRow    `json:"items"`
	Total  int            `json:"total"` // after selector and status filters
	Offset int            `json:"offset"`
	Limit  int            `json:"limit"`
	Counts map[string]int `json:"counts"` // by state, before the status filter
}

// AgentRow is an agent with its summarized state.
type AgentRow struct {
	*store.Agent
	State string `json:"state"`
}

// shown prepares agent records read for an answer: it blanks what the
// console never shows (the recorded hash of the agent's credential) and
// shows the effective config as the canonical YAML operators write,
// whether the record holds it by reference to a config version (its
// YAML) or as the JSON agents report (rendered), each distinct one once
// per answer.
func (a *API) shown(ctx context.Context, ags ...*store.Agent) {
	yamlOf := map[string]string{}
	for _, ag := range ags {
		ag.CredentialHash = ""
		key := ag.EffectiveConfig
		if ag.EffectiveConfigHash != "" {
			key = "version\x00" + ag.ProjectID + "\x00" + ag.EffectiveConfigHash
		} else if !strings.HasPrefix(key, "{") {
			continue // YAML (older agents) or none: shown as reported
		}
		y, ok := yamlOf[key]
		if !ok {
			y = a.effectiveYAML(ctx, ag)
			yamlOf[key] = y
		}
		ag.EffectiveConfig = y
	}
}

// effectiveYAML is an agent's effective config as canonical YAML: its
// config version's, or its JSON rendered; the JSON as reported when it
// is no config.
func (a *API) effectiveYAML(ctx context.Context, ag *store.Agent) string {
	if ag.EffectiveConfigHash != "" {
		cv, err := a.o.Store.ConfigVersionByHash(ctx, ag.ProjectID, ag.EffectiveConfigHash)
		if err != nil {
			return "" // the version is gone or the store is down: the hash still says which
		}
		return cv.YAML
	}
	if c, err := config.ParseJSON([]byte(ag.EffectiveConfig)); err == nil {
		if b, err := c.Marshal(); err == nil {
			return string(b)
		}
	}
	return ag.EffectiveConfig
}

// sortAgents orders by a field (id, hostname, platform, version, state,
// lastSeen, created), descending with a leading "-"; ties go by id.
func sortAgents(agents []*store.Agent, by string) error {
	desc := strings.HasPrefix(by, "-")
	by = strings.TrimPrefix(by, "-")
	var key func(x *store.Agent) string
	switch by {
	case "", "id":
		key = func(x *store.Agent) string { return "" }
	case "hostname":
		key = func(x *store.Agent) string { return x.Hostname }
	case "platform":
		key = func(x *store.Agent) string { return x.Platform }
	case "version":
		key = func(x *store.Agent) string { return x.Version }
	case "state":
		key = AgentState
	case "lastSeen":
		key = func(x *store.Agent) string { return x.LastSeen.UTC().Format(time.RFC3339Nano) }
	case "created":
		key = func(x *store.Agent) string { return x.CreatedAt.UTC().Format(time.RFC3339Nano) }
	default:
		return fmt.Errorf("%w: sort: %q is not id, hostname, platform, version, state, lastSeen or created", ErrBadRequest, by)
	}
	sort.SliceStable(agents, func(i, j int) bool {
		ki, kj := key(agents[i]), key(agents[j])
		if ki == kj {
			ki, kj = agents[i].ID, agents[j].ID
		}
		if desc {
			return ki > kj
		}
		return ki < kj
	})
	return nil
}

// AgentState summarizes an agent for filters: connected, disconnected,
// unhealthy or config-failed.
func AgentState(a *store.Agent) string {
	switch {
	case !a.Connected:
		return "disconnected"
	case a.ConfigStatus == "FAILED":
		return "config-failed"
	case !a.Healthy:
		return "unhealthy"
	}
	return "connected"
}

func (a *API) agent(r *http.Request) (*store.Agent, error) {
	ag, err := a.o.Store.AgentByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if ag.ProjectID != r.PathValue("project") {
		return nil, fmt.Errorf("agent %q: %w", ag.ID, store.ErrNotFound)
	}
	return ag, nil
}

func (a *API) getAgent(r *http.Request) (any, error) {
	ag, err := a.agent(r)
	if err != nil {
		return nil, err
	}
	a.shown(r.Context(), ag)
	return ag, nil
}

func (a *API) revokeAgent(r *http.Request) (any, error) {
	ag, err := a.agent(r)
	if err != nil {
		return nil, err
	}
	err = a.revokeAgentCredentials(r.Context(), ag)
	a.audit(r, ag.ProjectID, "agent.revoke", ag.ID, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": ag.ID, "status": "revoked"}, nil
}

// setRevoked marks an agent revoked (or re-admitted), retrying on a
// concurrent write of its record.
func (a *API) setRevoked(ctx context.Context, id string, revoked bool) error {
	for i := 0; i < 5; i++ {
		ag, err := a.o.Store.AgentByID(ctx, id)
		if err != nil {
			return err
		}
		ag.Revoked = revoked
		if err := a.o.Store.UpsertAgent(ctx, ag); !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("mark agent %s: %w", id, store.ErrConflict)
}

func (a *API) revokeAgentCredentials(ctx context.Context, ag *store.Agent) error {
	if err := a.setRevoked(ctx, ag.ID, true); err != nil {
		return err
	}
	ts, err := a.o.Store.ListTokens(ctx, ag.ProjectID, store.TokenKind(token.KindAgent))
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range ts {
		if t.AgentID == ag.ID && t.RevokedAt == nil {
			if err := a.o.Auth.Revoke(ctx, t.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a *API) rotateAgent(r *http.Request) (any, error) {
	ag, err := a.agent(r)
	if err != nil {
		return nil, err
	}
	err = a.o.Fleet.RotateCredential(r.Context(), ag.ID)
	a.audit(r, ag.ProjectID, "agent.rotate", ag.ID, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": ag.ID, "status": "pending"}, nil
}

// RotateResult reports a bulk rotation.
type RotateResult struct {
	Selected int      `json:"selected"`
	Started  int      `json:"started"`
	Failed   []string `json:"failed,omitempty"`
}

func (a *API) rotateBulk(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Selector string   `json:"selector"`
		IDs      []string `json:"ids,omitempty"` // instead of a selector: these agents
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	var agents []*store.Agent
	if len(body.IDs) > 0 {
		if body.Selector != "" {
			return nil, fmt.Errorf("%w: give a selector or ids, not both", ErrBadRequest)
		}
		for _, id := range body.IDs {
			ag, err := a.o.Store.AgentByID(r.Context(), id)
			if err != nil || ag.ProjectID != p.ID {
				return nil, fmt.Errorf("agent %q: %w", id, store.ErrNotFound)
			}
			agents = append(agents, ag)
		}
		body.Selector = "ids=" + strings.Join(body.IDs, ",")
	} else {
		agents, err = a.selected(r, p.ID, body.Selector)
		if err != nil {
			return nil, err
		}
	}
	res := &RotateResult{Selected: len(agents)}
	for _, ag := range agents {
		if err := a.o.Fleet.RotateCredential(r.Context(), ag.ID); err != nil {
			res.Failed = append(res.Failed, ag.ID+": "+err.Error())
			continue
		}
		res.Started++
	}
	a.audit(r, p.ID, "agents.rotate", body.Selector, nil)
	return res, nil
}

func (a *API) listAudit(r *http.Request) (any, error) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	project := r.URL.Query().Get("project")
	if project != "" {
		if err := a.authorize(r, project, read); err != nil {
			return nil, err
		}
	}
	es, err := a.o.Store.ListAudit(r.Context(), project, limit)
	if err != nil {
		return nil, err
	}
	out := []*store.AuditEntry{}
	if c := callerFrom(r.Context()); !c.fleetAdmin {
		// Users see the entries of their organizations' projects.
		ps, err := a.visibleProjects(r)
		if err != nil {
			return nil, err
		}
		ok := map[string]bool{}
		for _, p := range ps {
			ok[p.ID] = true
		}
		for _, e := range es {
			if ok[e.ProjectID] {
				out = append(out, e)
			}
		}
		return out, nil
	}
	return append(out, es...), nil
}
