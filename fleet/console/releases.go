package console

import (
	"errors"
	"fmt"

	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fleetprof/fleetprof/fleet/release"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/token"
)

// RegisterReleaseRequest registers a release kept elsewhere: the fleet
// fetches URL once to hash and sign it. (Uploads send the binary itself
// as application/octet-stream with ?version=V.)
type RegisterReleaseRequest struct {
	Version  string `json:"version"`
	URL      string `json:"url"`
	Platform string `json:"platform,omitempty"`
}

// ReleaseRolloutRequest is the body of POST
// /api/v1/projects/{project}/release-rollouts.
type ReleaseRolloutRequest struct {
	Version           string `json:"version"`
	Selector          string `json:"selector"`
	Canary            int    `json:"canary,omitempty"`
	WavePercent       int    `json:"wavePercent,omitempty"`
	WaveCount         int    `json:"waveCount,omitempty"`
	WavePause         string `json:"wavePause,omitempty"`
	MaxFailurePercent int    `json:"maxFailurePercent,omitempty"`
}

// RegisterReleases mounts the release, release-rollout and version
// inventory routes, served by m.
func (a *API) RegisterReleases(mux *http.ServeMux, m *release.Manager) {
	h := &releaseAPI{a: a, m: m}
	mux.HandleFunc("POST /api/v1/releases", a.wrap(write, h.create))
	mux.HandleFunc("GET /api/v1/releases", a.wrap(read, h.list))
	mux.HandleFunc("GET /api/v1/releases/{version}/download", h.download)
	mux.HandleFunc("GET /api/v1/release-key", h.key)
	mux.HandleFunc("POST /api/v1/projects/{project}/release-rollouts", a.wrap(write, h.rollout))
	mux.HandleFunc("GET /api/v1/projects/{project}/release-rollouts", a.wrap(read, h.rollouts))
	mux.HandleFunc("GET /api/v1/projects/{project}/release-rollouts/{id}", a.wrap(read, h.get))
	for _, act := range []string{"pause", "resume", "rollback"} {
		mux.HandleFunc("POST /api/v1/projects/{project}/release-rollouts/{id}/"+act, a.wrap(write, h.action(act)))
	}
	mux.HandleFunc("GET /api/v1/projects/{project}/versions", a.wrap(read, h.versions))
}

type releaseAPI struct {
	a *API
	m *release.Manager
}

func releaseErr(err error) error {
	if errors.Is(err, release.ErrInvalid) {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return err
}

func (h *releaseAPI) create(r *http.Request) (any, error) {
	var rel *store.Release
	var err error
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var body RegisterReleaseRequest
		if err := decode(r, &body); err != nil {
			return nil, err
		}
		rel, err = h.m.RegisterURL(r.Context(), body.Version, body.Platform, body.URL, actor(r))
	} else {
		q := r.URL.Query()
		rel, err = h.m.Upload(r.Context(), q.Get("version"), q.Get("platform"), r.Body, actor(r))
	}
	err = releaseErr(err)
	target := "release " + r.URL.Query().Get("version")
	if rel != nil {
		target = "release " + rel.Version + " sha256 " + rel.SHA256
	}
	h.a.audit(r, "", "release.create", target, err)
	return rel, err
}

func (h *releaseAPI) list(r *http.Request) (any, error) { return h.m.Releases(r.Context()) }

// agentCaller admits agent credentials (and admin tokens) for the routes
// agents call.
func (h *releaseAPI) agentCaller(w http.ResponseWriter, r *http.Request) bool {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		WriteError(w, h.a.log, r, fmt.Errorf("%w: no bearer token", ErrUnauthorized))
		return false
	}
	c, err := h.a.o.Auth.Verify(r.Context(), strings.TrimSpace(raw))
	if err != nil {
		WriteError(w, h.a.log, r, err)
		return false
	}
	if k := c.Kind(); k != token.KindAgent && k != token.KindAdmin {
		WriteError(w, h.a.log, r, fmt.Errorf("%w: needs an agent credential", ErrForbidden))
		return false
	}
	return true
}

// download serves an uploaded release's binary (Range requests too, so
// an agent can resume a cut download).
func (h *releaseAPI) download(w http.ResponseWriter, r *http.Request) {
	if !h.agentCaller(w, r) {
		return
	}
	f, rel, err := h.m.Open(r.Context(), r.PathValue("version"))
	if err != nil {
		WriteError(w, h.a.log, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Fleetprof-Sha256", rel.SHA256)
	http.ServeContent(w, r, "fleetprof-agent-"+rel.Version, rel.CreatedAt, f)
}

// key serves the release public key (PKIX PEM) that agents pin.
func (h *releaseAPI) key(w http.ResponseWriter, r *http.Request) {
	if !h.agentCaller(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(release.PublicKeyPEM(h.m.PublicKey()))
}

func (h *releaseAPI) rollout(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	var body ReleaseRolloutRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	var pause time.Duration
	if body.WavePause != "" {
		if pause, err = time.ParseDuration(body.WavePause); err != nil {
			return nil, fmt.Errorf("%w: wavePause: %q is not a duration (e.g. 30s)", ErrBadRequest, body.WavePause)
		}
	}
	st, err := h.m.StartRollout(r.Context(), release.RolloutRequest{
		ProjectID: p.ID, Version: body.Version, Selector: body.Selector, Canary: body.Canary, WavePercent: body.WavePercent,
		WaveCount: body.WaveCount, WavePause: pause, MaxFailurePercent: body.MaxFailurePercent, Actor: actor(r),
	})
	err = releaseErr(err)
	target := "release " + body.Version + " to " + strconv.Quote(body.Selector)
	if st != nil {
		target = "release rollout " + st.ID + " of " + body.Version + " to " + strconv.Quote(st.Selector)
	}
	h.a.audit(r, p.ID, "release.rollout", target, err)
	return st, err
}

func (h *releaseAPI) rollouts(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	return h.m.ListRollouts(r.Context(), p.ID)
}

// inProject loads a release rollout and checks it belongs to the path's
// project.
func (h *releaseAPI) inProject(r *http.Request) (*release.Status, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	st, err := h.m.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if st.ProjectID != p.ID {
		return nil, fmt.Errorf("release rollout %s in project %s: %w", r.PathValue("id"), p.ID, store.ErrNotFound)
	}
	return st, nil
}

func (h *releaseAPI) get(r *http.Request) (any, error) { return h.inProject(r) }

func (h *releaseAPI) action(act string) apiFunc {
	return func(r *http.Request) (any, error) {
		st, err := h.inProject(r)
		if err != nil {
			return nil, err
		}
		var out *release.Status
		switch act {
		case "pause":
			out, err = h.m.Pause(r.Context(), st.ID, actor(r))
		case "resume":
			out, err = h.m.Resume(r.Context(), st.ID, actor(r))
		default:
			out, err = h.m.Rollback(r.Context(), st.ID, actor(r))
		}
		h.a.audit(r, st.ProjectID, "release.rollout."+act, st.ID, err)
		return out, err
	}
}

func (h *releaseAPI) versions(r *http.Request) (any, error) {
	p, err := h.a.project(r)
	if err != nil {
		return nil, err
	}
	return h.m.Versions(r.Context(), p.ID)
}
