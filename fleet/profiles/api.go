package profiles

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/fleetprof/fleetprof/internal/token"
)

// QueryAPI serves the read side of a Store over HTTP with JSON envelopes:
// {"data": ...} or {"error": {"code": ..., "message": ...}}.
type QueryAPI struct {
	s   Store
	now func() time.Time
}

// NewQueryAPI returns the HTTP query API of s.
func NewQueryAPI(s Store) *QueryAPI { return &QueryAPI{s: s, now: time.Now} }

// apiError carries an HTTP status and envelope code.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

// Register mounts the routes under /api/v1/projects/{project}/profiles/.
// authorize is called first on every request with the path's project id;
// an error wrapping token.ErrScope answers 403, any other error 401.
func (a *QueryAPI) Register(mux *http.ServeMux, authorize func(r *http.Request, projectID string) error) {
	h := func(f func(r *http.Request, project string) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			project := r.PathValue("project")
			if err := authorize(r, project); err != nil {
				if errors.Is(err, token.ErrScope) {
					writeError(w, &apiError{http.StatusForbidden, "permission_denied", err.Error()})
				} else {
					writeError(w, &apiError{http.StatusUnauthorized, "unauthenticated", err.Error()})
				}
				return
			}
			v, err := f(r, project)
			if err != nil {
				writeError(w, err)
				return
			}
			if raw, ok := v.(rawBody); ok {
				w.Header().Set("Content-Type", raw.contentType)
				w.Write(raw.data)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"data": v})
		}
	}
	const base = "GET /api/v1/projects/{project}/profiles"
	mux.HandleFunc(base+"/types", h(a.types))
	mux.HandleFunc(base+"/labels", h(a.labels))
	mux.HandleFunc(base+"/labels/{name}/values", h(a.labelValues))
	mux.HandleFunc(base+"/series", h(a.series))
	mux.HandleFunc(base+"/merge", h(a.merge))
}

type rawBody struct {
	contentType string
	data        []byte
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, ErrInvalid):
		ae = &apiError{http.StatusBadRequest, "invalid_argument", err.Error()}
	case errors.Is(err, ErrNotFound):
		ae = &apiError{http.StatusNotFound, "not_found", err.Error()}
	case errors.Is(err, ErrUnavailable):
		ae = &apiError{http.StatusServiceUnavailable, "unavailable", err.Error()}
		w.Header().Set("Retry-After", "5")
	default:
		ae = &apiError{http.StatusInternalServerError, "internal", err.Error()}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": ae.code, "message": ae.message}})
}

// ParseTime accepts RFC 3339 or unix milliseconds.
func ParseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 or unix milliseconds: %w", s, ErrInvalid)
}

// timeRange reads from/to; defaults are the last hour.
func (a *QueryAPI) timeRange(r *http.Request) (time.Time, time.Time, error) {
	to, from := a.now(), time.Time{}
	var err error
	if v := r.URL.Query().Get("to"); v != "" {
		if to, err = ParseTime(v); err != nil {
			return from, to, err
		}
	}
	from = to.Add(-time.Hour)
	if v := r.URL.Query().Get("from"); v != "" {
		if from, err = ParseTime(v); err != nil {
			return from, to, err
		}
	}
	if !to.After(from) {
		return from, to, fmt.Errorf("from must be before to: %w", ErrInvalid)
	}
	return from, to, nil
}

func (a *QueryAPI) query(r *http.Request) (Query, error) {
	from, to, err := a.timeRange(r)
	if err != nil {
		return Query{}, err
	}
	return NewQuery(r.URL.Query().Get("query"), from, to)
}

type typeJSON struct {
	ID string `json:"id"`
	ProfileType
}

func (a *QueryAPI) types(r *http.Request, project string) (any, error) {
	from, to, err := a.timeRange(r)
	if err != nil {
		return nil, err
	}
	ts, err := a.s.ProfileTypes(r.Context(), project, from, to)
	if err != nil {
		return nil, err
	}
	out := make([]typeJSON, len(ts))
	for i, t := range ts {
		out[i] = typeJSON{t.ID(), t}
	}
	return out, nil
}

func (a *QueryAPI) labels(r *http.Request, project string) (any, error) {
	from, to, err := a.timeRange(r)
	if err != nil {
		return nil, err
	}
	return a.s.LabelNames(r.Context(), project, from, to)
}

func (a *QueryAPI) labelValues(r *http.Request, project string) (any, error) {
	from, to, err := a.timeRange(r)
	if err != nil {
		return nil, err
	}
	return a.s.LabelValues(r.Context(), project, r.PathValue("name"), from, to)
}

func (a *QueryAPI) series(r *http.Request, project string) (any, error) {
	q, err := a.query(r)
	if err != nil {
		return nil, err
	}
	return a.s.Series(r.Context(), project, q)
}

func (a *QueryAPI) merge(r *http.Request, project string) (any, error) {
	q, err := a.query(r)
	if err != nil {
		return nil, err
	}
	switch f := r.URL.Query().Get("format"); f {
	case "pprof":
		p, err := a.s.Merge(r.Context(), project, q)
		if err != nil {
			return nil, err
		}
		var buf bytesBuffer
		if err := p.Write(&buf); err != nil {
			return nil, fmt.Errorf("encode merged profile: %w", err)
		}
		return rawBody{"application/octet-stream", buf.b}, nil
	case "top":
		limit := 0
		if v := r.URL.Query().Get("limit"); v != "" {
			if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
				return nil, fmt.Errorf("limit %q: %w", v, ErrInvalid)
			}
		}
		return a.s.Top(r.Context(), project, q, limit)
	case "flamegraph", "":
		return a.s.FlameGraph(r.Context(), project, q)
	default:
		return nil, fmt.Errorf("format %q: want pprof, top or flamegraph: %w", f, ErrInvalid)
	}
}

type bytesBuffer struct{ b []byte }

func (b *bytesBuffer) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }
