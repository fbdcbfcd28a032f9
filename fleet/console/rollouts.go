package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// ApplyConfigRequest is the body of POST /api/v1/projects/{project}/rollouts:
// a config document and how to roll it out.
type ApplyConfigRequest struct {
	YAML     string `json:"yaml"`
	Selector string `json:"selector"`
	Canary   int    `json:"canary,omitempty"`
	// WavePercent or WaveCount size the waves; both 0 means one wave.
	WavePercent int `json:"wavePercent,omitempty"`
	WaveCount   int `json:"waveCount,omitempty"`
	// WavePause is a Go duration ("30s"); "" means none.
	WavePause         string `json:"wavePause,omitempty"`
	MaxFailurePercent int    `json:"maxFailurePercent,omitempty"`
}

// AppliedConfig is the answer to an apply: the stored version and the
// rollout that moves it.
type AppliedConfig struct {
	Config  *store.ConfigVersion `json:"config"`
	Rollout *rollout.Status      `json:"rollout"`
}

// RegisterRollouts mounts the config and rollout routes, served by ctl.
func (a *API) RegisterRollouts(mux *http.ServeMux, ctl *rollout.Controller) {
	h := &rolloutAPI{a: a, ctl: ctl}
	mux.HandleFunc("POST /api/v1/projects/{project}/rollouts", a.wrap(write, h.apply))
	mux.HandleFunc("GET /api/v1/projects/{project}/rollouts", a.wrap(read, h.list))
	mux.HandleFunc("GET /api/v1/projects/{project}/configs", a.wrap(read, h.configs))
	mux.HandleFunc("GET /api/v1/projects/{project}/configs/{id}", a.wrap(read, h.config))
	mux.HandleFunc("GET /api/v1/rollouts/{id}", a.wrap(read, h.get))
	mux.HandleFunc("POST /api/v1/rollouts/{id}/pause", a.wrap(write, h.action("rollout.pause", ctl.Pause)))
	mux.HandleFunc("POST /api/v1/rollouts/{id}/resume", a.wrap(write, h.action("rollout.resume", ctl.Resume)))
	mux.HandleFunc("POST /api/v1/rollouts/{id}/rollback", a.wrap(write, h.action("rollout.rollback", ctl.Rollback)))
}

type rolloutAPI struct {
	a   *API
	ctl *rollout.Controller
}

// domainErr maps the rollout package's caller errors to ErrBadRequest.
func domainErr(err error) error {
	if errors.Is(err, rollout.ErrInvalid) {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return err
}

func actor(r *http.Request) string {
	if p := PrincipalFrom(r.Context()); p != nil {
		return p.Name
	}
	return "unknown"
}

func (h *rolloutAPI) apply(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	var body ApplyConfigRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	var pause time.Duration
	if body.WavePause != "" {
		if pause, err = time.ParseDuration(body.WavePause); err != nil {
			err = fmt.Errorf("%w: wavePause: %q is not a duration (e.g. 30s)", ErrBadRequest, body.WavePause)
			h.a.audit(r, p.ID, "config.apply", body.Selector, err)
			return nil, err
		}
	}
	ro, cv, err := h.ctl.Apply(r.Context(), rollout.ApplyRequest{
		ProjectID: p.ID, YAML: []byte(body.YAML), Selector: body.Selector, Canary: body.Canary,
		WavePercent: body.WavePercent, WaveCount: body.WaveCount, WavePause: pause,
		MaxFailurePercent: body.MaxFailurePercent, Actor: actor(r),
	})
	target := "selector " + body.Selector
	if ro != nil {
		target = fmt.Sprintf("rollout %s of config v%d to %q", ro.ID, cv.Version, ro.Selector)
	}
	err = domainErr(err)
	h.a.audit(r, p.ID, "config.apply", target, err)
	if err != nil {
		return nil, err
	}
	st, err := h.ctl.Get(r.Context(), ro.ID)
	if err != nil {
		return nil, err
	}
	return &AppliedConfig{Config: cv, Rollout: st}, nil
}

func (h *rolloutAPI) list(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	return h.ctl.List(r.Context(), p.ID)
}

func (h *rolloutAPI) configs(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	cs, err := h.a.o.Store.ListConfigVersions(r.Context(), p.ID)
	if cs == nil {
		cs = []*store.ConfigVersion{}
	}
	return cs, err
}

func (h *rolloutAPI) config(r *http.Request) (any, error) {
	cv, err := h.a.o.Store.ConfigVersionByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if cv.ProjectID != r.PathValue("project") {
		return nil, fmt.Errorf("config version %q: %w", cv.ID, store.ErrNotFound)
	}
	return cv, nil
}

// get answers a rollout with its agents, or with counts only for
// ?agents=false (cheap to poll at any fleet size).
func (h *rolloutAPI) get(r *http.Request) (any, error) {
	if r.URL.Query().Get("agents") == "false" {
		return h.ctl.Summary(r.Context(), r.PathValue("id"))
	}
	return h.ctl.Get(r.Context(), r.PathValue("id"))
}

func (h *rolloutAPI) action(name string, do func(ctx context.Context, id, actor string) (*rollout.Status, error)) apiFunc {
	return func(r *http.Request) (any, error) {
		id := r.PathValue("id")
		project := ""
		if ro, err := h.a.o.Store.RolloutByID(r.Context(), id); err == nil {
			project = ro.ProjectID
		}
		st, err := do(r.Context(), id, actor(r))
		h.a.audit(r, project, name, id, err)
		return st, err
	}
}
