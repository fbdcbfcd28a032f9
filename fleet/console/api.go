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
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
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
	Now      func() time.Time
}

// API is the JSON API under /api/v1.
type API struct {
	o   Options
	log *zap.Logger
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

// authenticate resolves the caller from the bearer token.
func (a *API) authenticate(r *http.Request) (*auth.Principal, error) {
	raw, ok := auth.Bearer(r.Header.Get("Authorization"))
	if !ok {
		return nil, fmt.Errorf("%w: missing bearer token", ErrUnauthorized)
	}
	p, err := a.o.Auth.Admin(r.Context(), raw)
	if errors.Is(err, token.ErrScope) {
		// A valid token of another kind is no admin credential at all.
		return nil, fmt.Errorf("%w: not an admin token", ErrUnauthorized)
	}
	return p, err
}

// access is what a route needs from its caller.
type access int

const (
	read access = iota
	write
)

// wrap authenticates, authorizes, runs f and writes its result.
func (a *API) wrap(need access, f apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r)
		if err != nil {
			WriteError(w, a.log, r, err)
			return
		}
		if need == write && p.ReadOnly {
			WriteError(w, a.log, r, fmt.Errorf("%w: read-only token", ErrForbidden))
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, p))
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
	mux.HandleFunc("GET /api/v1/audit", a.wrap(read, a.listAudit))
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
		Name string `json:"name"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	body.Name = strings.TrimSpace(body.Name)
	if body.Name == "" || len(body.Name) > 100 {
		return nil, fmt.Errorf("%w: name: must be 1 to 100 characters", ErrBadRequest)
	}
	p := &store.Project{ID: uuid.NewString(), Name: body.Name, CreatedAt: a.o.Now().UTC()}
	err := a.o.Store.CreateProject(r.Context(), p)
	a.audit(r, p.ID, "project.create", body.Name, err)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (a *API) listProjects(r *http.Request) (any, error) {
	ps, err := a.o.Store.ListProjects(r.Context())
	if ps == nil {
		ps = []*store.Project{}
	}
	return ps, err
}

func (a *API) project(r *http.Request) (*store.Project, error) {
	return a.o.Store.ProjectByID(r.Context(), r.PathValue("project"))
}

func (a *API) getProject(r *http.Request) (any, error) { return a.project(r) }

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
	if st := r.URL.Query().Get("status"); st != "" {
		kept := agents[:0]
		for _, ag := range agents {
			if AgentState(ag) == st {
				kept = append(kept, ag)
			}
		}
		agents = kept
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	if agents == nil {
		agents = []*store.Agent{}
	}
	return agents, nil
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

func (a *API) getAgent(r *http.Request) (any, error) { return a.agent(r) }

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

func (a *API) revokeAgentCredentials(ctx context.Context, ag *store.Agent) error {
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
		Selector string `json:"selector"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	agents, err := a.selected(r, p.ID, body.Selector)
	if err != nil {
		return nil, err
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
	es, err := a.o.Store.ListAudit(r.Context(), r.URL.Query().Get("project"), limit)
	if es == nil {
		es = []*store.AuditEntry{}
	}
	return es, err
}
