package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	profilestorev1alpha1 "github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
	pushv1 "github.com/fleetprof/fleetprof/internal/pb/push/v1"
	"github.com/fleetprof/fleetprof/internal/pb/push/v1/pushv1connect"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Authorizer checks a bearer token for the writeProfiles scope and returns
// its project id. Errors wrap the sentinels of internal/token:
// errors.Is(err, token.ErrScope) → 403 PermissionDenied; any other → 401.
type Authorizer interface {
	AuthorizeWrite(ctx context.Context, bearer string) (projectID string, err error)
}

// Options configure a Handler.
type Options struct {
	// Store receives the profiles; required.
	Store profiles.Store
	// Auth checks bearer tokens; required.
	Auth Authorizer
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer for the ingest metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Limits; zero fields take the defaults documented on Limits.
	Limits Limits
	// Now is the clock for profiles without a time; nil means time.Now.
	Now func() time.Time
}

// DefaultName is the profile name (__name__) of uploads that give none.
const DefaultName = "process_cpu"

// projectLabels are label names by which an upload could claim a project;
// they must agree with the token's project and are then dropped.
var projectLabels = []string{"project", "project_id", "projectId", "__project__", "__tenant__"}

// Handler serves the ingest endpoints.
type Handler struct {
	store    profiles.Store
	auth     Authorizer
	log      *zap.Logger
	lim      Limits
	now      func() time.Time
	profiles *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	rejected *prometheus.CounterVec
}

// New checks the options and builds a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Store == nil || opts.Auth == nil {
		return nil, errors.New("ingest: Store and Auth are required")
	}
	h := &Handler{store: opts.Store, auth: opts.Auth, log: opts.Logger, lim: opts.Limits.withDefaults(), now: opts.Now}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.profiles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_ingest_profiles_total", Help: "Profiles accepted by ingest."}, []string{"protocol"})
	h.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_ingest_bytes_total", Help: "Gzipped pprof bytes accepted by ingest."}, []string{"protocol"})
	h.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_ingest_rejected_total", Help: "Ingest requests rejected, by reason."}, []string{"protocol", "code"})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{h.profiles, h.bytes, h.rejected} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register ingest metrics: %w", err)
			}
		}
	}
	return h, nil
}

// Register mounts the Parca and Pyroscope services (gRPC, gRPC-Web and
// Connect) and POST /ingest on mux. Serve mux with HTTP/2 (h2c or TLS)
// for gRPC clients.
func (h *Handler) Register(mux *http.ServeMux) {
	opts := []connect.HandlerOption{connect.WithReadMaxBytes(int(h.lim.MaxRequestBytes))}
	mux.Handle(profilestorev1alpha1connect.NewProfileStoreServiceHandler(parcaService{h}, opts...))
	mux.Handle(pushv1connect.NewPusherServiceHandler(pushService{h}, opts...))
	mux.HandleFunc("POST /ingest", h.serveIngest)
}

type label struct{ name, value string }

type seriesIn struct {
	labels []label
	raws   [][]byte
}

// ingest authorizes, validates everything, then writes all or nothing.
func (h *Handler) ingest(ctx context.Context, protocol, authHeader, tenant string, series []seriesIn) (n int, err error) {
	defer func() {
		if err != nil {
			_, code, _ := Status(err)
			h.rejected.WithLabelValues(protocol, code).Inc()
			if st, _, _ := Status(err); st >= 500 {
				h.log.Error("ingest", zap.String("protocol", protocol), zap.Error(err))
			} else {
				h.log.Debug("ingest rejected", zap.String("protocol", protocol), zap.Error(err))
			}
		}
	}()
	bearer, ok := strings.CutPrefix(authHeader, "Bearer ")
	if !ok || strings.TrimSpace(bearer) == "" {
		return 0, fmt.Errorf("missing bearer token: %w", ErrUnauthenticated)
	}
	project, err := h.auth.AuthorizeWrite(ctx, strings.TrimSpace(bearer))
	if err != nil {
		if errors.Is(err, token.ErrScope) {
			return 0, fmt.Errorf("token may not write profiles: %w: %w", ErrPermissionDenied, err)
		}
		return 0, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if tenant != "" && tenant != project {
		return 0, fmt.Errorf("tenant %q is not the token's project: %w", tenant, ErrPermissionDenied)
	}
	count := 0
	for _, s := range series {
		count += len(s.raws)
	}
	if count > h.lim.MaxProfiles {
		return 0, fmt.Errorf("request has %d profiles, more than %d: %w", count, h.lim.MaxProfiles, ErrTooLarge)
	}
	var out []profiles.Profile
	var size int
	for i, s := range series {
		labels, err := h.checkLabels(s.labels, project)
		if err != nil {
			return 0, fmt.Errorf("series %d: %w", i, err)
		}
		name := labels[profiles.NameLabel]
		if name == "" {
			name = DefaultName
			labels[profiles.NameLabel] = name
		}
		for j, raw := range s.raws {
			p, gz, err := Decode(raw, h.lim)
			if err != nil {
				return 0, fmt.Errorf("series %d profile %d: %w", i, j, err)
			}
			typ, total := profiles.Describe(p, name)
			at := h.now()
			if p.TimeNanos > 0 {
				at = time.Unix(0, p.TimeNanos)
			}
			out = append(out, profiles.Profile{Labels: labels, Type: typ, Time: at, Duration: time.Duration(p.DurationNanos), Total: total, Data: gz})
			size += len(gz)
		}
	}
	if err := h.store.Write(ctx, project, out); err != nil {
		return 0, fmt.Errorf("store profiles: %w", err)
	}
	h.profiles.WithLabelValues(protocol).Add(float64(len(out)))
	h.bytes.WithLabelValues(protocol).Add(float64(size))
	return len(out), nil
}

func validLabelName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

func (h *Handler) checkLabels(in []label, project string) (map[string]string, error) {
	if len(in) > h.lim.MaxLabels {
		return nil, fmt.Errorf("%d labels, more than %d: %w", len(in), h.lim.MaxLabels, ErrInvalid)
	}
	out := make(map[string]string, len(in)+1)
	for _, l := range in {
		switch {
		case len(l.name) > h.lim.MaxLabelNameLength:
			return nil, fmt.Errorf("label name of %d bytes, more than %d: %w", len(l.name), h.lim.MaxLabelNameLength, ErrInvalid)
		case len(l.value) > h.lim.MaxLabelValueLength:
			return nil, fmt.Errorf("label %s: value of %d bytes, more than %d: %w", l.name, len(l.value), h.lim.MaxLabelValueLength, ErrInvalid)
		case !validLabelName(l.name):
			return nil, fmt.Errorf("label name %q: want [a-zA-Z_][a-zA-Z0-9_]*: %w", l.name, ErrInvalid)
		case l.name == profiles.TypeLabel:
			return nil, fmt.Errorf("label name %s is reserved: %w", l.name, ErrInvalid)
		}
		if _, dup := out[l.name]; dup {
			return nil, fmt.Errorf("label %s given twice: %w", l.name, ErrInvalid)
		}
		out[l.name] = l.value
	}
	for _, n := range projectLabels {
		if v, ok := out[n]; ok {
			if v != project {
				return nil, fmt.Errorf("label %s=%q claims another project than the token's: %w", n, v, ErrPermissionDenied)
			}
			delete(out, n)
		}
	}
	return out, nil
}

func connectError(err error) error {
	st, _, code := Status(err)
	ce := connect.NewError(code, err)
	if st == http.StatusServiceUnavailable {
		ce.Meta().Set("Retry-After", RetryAfter)
	}
	return ce
}

type parcaService struct{ h *Handler }

func (s parcaService) WriteRaw(ctx context.Context, req *connect.Request[profilestorev1alpha1.WriteRawRequest]) (*connect.Response[profilestorev1alpha1.WriteRawResponse], error) {
	var series []seriesIn
	for _, rs := range req.Msg.GetSeries() {
		var si seriesIn
		for _, l := range rs.GetLabels().GetLabels() {
			si.labels = append(si.labels, label{l.GetName(), l.GetValue()})
		}
		for _, smp := range rs.GetSamples() {
			si.raws = append(si.raws, smp.GetRawProfile())
		}
		series = append(series, si)
	}
	if _, err := s.h.ingest(ctx, "parca", req.Header().Get("Authorization"), req.Msg.GetTenant(), series); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&profilestorev1alpha1.WriteRawResponse{}), nil
}

type pushService struct{ h *Handler }

func (s pushService) Push(ctx context.Context, req *connect.Request[pushv1.PushRequest]) (*connect.Response[pushv1.PushResponse], error) {
	var series []seriesIn
	for _, rs := range req.Msg.GetSeries() {
		var si seriesIn
		for _, l := range rs.GetLabels() {
			si.labels = append(si.labels, label{l.GetName(), l.GetValue()})
		}
		for _, smp := range rs.GetSamples() {
			si.raws = append(si.raws, smp.GetRawProfile())
		}
		series = append(series, si)
	}
	if _, err := s.h.ingest(ctx, "pyroscope", req.Header().Get("Authorization"), "", series); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pushv1.PushResponse{}), nil
}

// serveIngest handles POST /ingest?format=pprof&name=<name>{k="v",...}
// with a pprof body (gzipped or not).
func (h *Handler) serveIngest(w http.ResponseWriter, r *http.Request) {
	n, err := h.httpIngest(w, r)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		st, code, _ := Status(err)
		if st == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", RetryAfter)
		}
		w.WriteHeader(st)
		json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": err.Error()}})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"data": map[string]int{"profiles": n}})
}

func (h *Handler) httpIngest(w http.ResponseWriter, r *http.Request) (int, error) {
	q := r.URL.Query()
	if f := q.Get("format"); f != "" && f != "pprof" {
		h.rejected.WithLabelValues("http", "invalid_argument").Inc()
		return 0, fmt.Errorf("format %q: only pprof is supported: %w", f, ErrInvalid)
	}
	labels, err := parseName(q.Get("name"))
	if err != nil {
		h.rejected.WithLabelValues("http", "invalid_argument").Inc()
		return 0, err
	}
	if r.ContentLength > h.lim.MaxRequestBytes {
		h.rejected.WithLabelValues("http", "resource_exhausted").Inc()
		return 0, fmt.Errorf("request body of %d bytes, more than %d: %w", r.ContentLength, h.lim.MaxRequestBytes, ErrTooLarge)
	}
	body := http.MaxBytesReader(w, r.Body, h.lim.MaxRequestBytes)
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.rejected.WithLabelValues("http", "resource_exhausted").Inc()
			return 0, fmt.Errorf("request body exceeds %d bytes: %w", h.lim.MaxRequestBytes, ErrTooLarge)
		}
		return 0, fmt.Errorf("read request body: %w: %w", ErrInvalid, err)
	}
	return h.ingest(r.Context(), "http", r.Header.Get("Authorization"), "", []seriesIn{{labels: labels, raws: [][]byte{data}}})
}

// parseName parses `name{k="v",...}` into labels (__name__ first). Only
// equality is allowed; at most 100,000 bytes are looked at.
func parseName(s string) ([]label, error) {
	if len(s) > 100_000 {
		return nil, fmt.Errorf("name parameter of %d bytes is too long: %w", len(s), ErrInvalid)
	}
	name, rest := s, ""
	if i := strings.IndexByte(s, '{'); i >= 0 {
		name, rest = s[:i], s[i:]
	}
	if strings.Contains(name, ":") {
		return nil, fmt.Errorf("name %q must not contain ':': %w", name, ErrInvalid)
	}
	var out []label
	if name != "" {
		out = append(out, label{profiles.NameLabel, name})
	}
	if rest == "" {
		return out, nil
	}
	ms, err := profiles.ParseSelector(rest)
	if err != nil {
		return nil, fmt.Errorf("name parameter: %w: %w", ErrInvalid, err)
	}
	for _, m := range ms {
		if m.Type != profiles.MatchEqual {
			return nil, fmt.Errorf("name parameter: label %s must use =: %w", m.Name, ErrInvalid)
		}
		out = append(out, label{m.Name, m.Value})
	}
	return out, nil
}
