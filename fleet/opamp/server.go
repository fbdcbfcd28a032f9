package opamp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
	opampserver "github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Path is where the OpAMP endpoint is mounted.
const Path = "/v1/opamp"

// Errors.
var (
	// ErrNotConnected: the agent has no live WebSocket connection here.
	ErrNotConnected = errors.New("agent not connected")
)

// Callbacks tell the rest of the fleet what agents report. Each is called
// from the agent's connection goroutine, never concurrently for one agent,
// and must return quickly. Nil fields are no-ops (see SetDefaults).
type Callbacks struct {
	// OnAgentStatus is called after an agent's record changed (connect,
	// disconnect, health, config status). a must not be modified: the
	// connection keeps it as its copy of the record.
	OnAgentStatus func(a *store.Agent)
	// OnPackageStatuses is called with what an agent reports about the
	// packages it was offered (agent upgrades).
	OnPackageStatuses func(agentID string, st *protobufs.PackageStatuses)
}

// SetDefaults fills nil callbacks with no-ops.
func (c *Callbacks) SetDefaults() {
	if c.OnAgentStatus == nil {
		c.OnAgentStatus = func(*store.Agent) {}
	}
	if c.OnPackageStatuses == nil {
		c.OnPackageStatuses = func(string, *protobufs.PackageStatuses) {}
	}
}

// Options configures the server.
type Options struct {
	Store  store.Store
	Auth   *auth.Authenticator
	Logger *zap.Logger
	// Registerer receives the server's metrics; nil means none.
	Registerer prometheus.Registerer
	// CredentialTTL is the lifetime of agent credentials; 0 means 24h.
	CredentialTTL time.Duration
	// RotateAt is the share of a credential's life after which it is
	// rotated automatically; 0 means 2/3.
	RotateAt float64
	// MaxConnections caps WebSocket agents held; beyond it new ones get
	// 503 + Retry-After. 0 means 19,000 (under the 20,000 file limit).
	MaxConnections int
	// MaxPendingHandshakes caps concurrent handshakes; beyond it 429 +
	// Retry-After (1–2 s). 0 means 2048: a handshake costs a goroutine
	// and a signature check, and a refused agent loses a second or two.
	MaxPendingHandshakes int
	// MaxMessageBytes bounds a plain-HTTP OpAMP body after decompression.
	// 0 means 4 MiB.
	MaxMessageBytes int64
	// WriteTimeout bounds every send to an agent. 0 means 10s.
	WriteTimeout time.Duration
	// HeartbeatInterval offered to agents. 0 means 30s.
	HeartbeatInterval time.Duration
	// RotationRate paces bulk rotations: credentials offered per second,
	// so that rotating a large fleet is no reconnect storm. 0 means 100.
	RotationRate float64
	// FailRotation is a test hook: when it returns true for an agent, the
	// credential offered to it is revoked before it can be used.
	FailRotation func(agentID string) bool
	// SoleWriter says this process is the only writer of the agent
	// records (the embedded SQLite store). A record LoadRecorded listed
	// then stays true until this process writes it, so an agent's first
	// report after a restart that changes nothing is neither read nor
	// written. False (several replicas on PostgreSQL): such a report
	// reads the record first.
	SoleWriter bool
	// ConfigJSON returns the canonical JSON (config.JSON, what a push
	// carries) of a project's config version by hash, nil for none. An
	// effective config that is exactly the JSON of the config the agent
	// reports is recorded by reference (store.Agent.EffectiveConfigHash).
	// Nil: effective configs are recorded in full.
	ConfigJSON func(projectID, hash string) []byte
	Callbacks  Callbacks
	Now        func() time.Time
}

// Server serves OpAMP at Path.
type Server struct {
	o       Options
	log     *zap.Logger
	handler http.Handler
	connCtx opampserver.ConnContext

	mu    sync.Mutex
	conns map[string]*conn   // agent id → live WebSocket connection
	byJTI map[string][]*conn // credential id → connections using it
	locks sync.Map           // agent id → *sync.Mutex serializing record updates
	// recorded holds each agent's current credential with the sum
	// recorded for it (verify), by instance uid: 64 bytes of key and
	// value an agent.
	recMu    sync.RWMutex
	recorded map[[16]byte]recordedCredential
	// preloaded holds the agents' records as LoadRecorded listed them,
	// not yet decoded, by instance uid: each agent's first status report
	// after a restart starts from its own (and drops it) instead of a
	// store read. Dropped whole after preloadFor.
	preMu     sync.Mutex
	preloaded map[[16]byte]preloadedRecord
	closed    bool
	// busy counts handlers doing store work (by mu; idle signals zero);
	// drained is set once Shutdown has waited for them, after which
	// handlers skip store work: the store may be closed.
	busy    int
	idle    *sync.Cond
	drained bool

	pending atomic.Int64
	// lastHandshake is when the last handshake began (unix ns); the
	// queued full-state asks wait for a pause (fullStates).
	lastHandshake atomic.Int64
	fullStates    fullStateQueue
	// stop is closed by Shutdown: the server's own goroutines end.
	stop     chan struct{}
	stopOnce sync.Once
	// listing is set while LoadRecordedWhileServing lists: handshakes
	// wait for the channel to close before they are admitted.
	listing atomic.Pointer[chan struct{}]
	// scanAt is when scanExpiring must look at the connections again
	// (unix ns): the earliest rotation or expiry due, 0 after a new
	// connection.
	scanAt atomic.Int64
	poll   *poller
	m      metrics
	rq     rotationQueue
	jobs   chan func()
}

// work runs f on one of the server's store workers and waits for it. It
// reports false, without running f, once Shutdown has drained the
// handlers.
func (s *Server) work(f func()) bool {
	if !s.begin() {
		return false
	}
	defer s.end()
	done := make(chan struct{})
	s.jobs <- func() { defer close(done); f() }
	<-done
	return true
}

// begin counts a handler's store work in, unless Shutdown drained them.
func (s *Server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drained {
		return false
	}
	s.busy++
	return true
}

func (s *Server) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy--; s.busy == 0 {
		s.idle.Broadcast()
	}
}

func (s *Server) worker() {
	for f := range s.jobs {
		f()
	}
}

type metrics struct {
	connected        prometheus.Gauge
	rejected         *prometheus.CounterVec
	enrollments      prometheus.Counter
	recordCache      *prometheus.CounterVec
	messages         prometheus.Counter
	offers           *prometheus.CounterVec
	credentialChecks *prometheus.CounterVec
	configStatus     *prometheus.CounterVec
	fullStateAsks    *prometheus.CounterVec
	handshakes       *prometheus.CounterVec
}

// conn is the state of one OpAMP connection.
type conn struct {
	s         *Server
	c         types.Connection
	claims    *token.Claims
	ws        bool
	agentID   string
	lastSeq   uint64
	haveSeq   bool
	lastWrite time.Time
	// steady: the record is current and nothing is pending for this
	// connection, so bare heartbeats need no store work (onMessage's
	// goroutine only).
	steady bool
	sendMu sync.Mutex
	// offered is set once a credential was offered on this connection, so
	// that heartbeats on it do not mint candidates while the agent proves
	// the one it has.
	offered atomic.Bool
	// rec is the agent's record as this connection last read or wrote
	// it, kept from one status report to the next (updateAgentVia);
	// onMessage's goroutine only.
	rec *store.Agent
	// sum is the hex token.Sum of the connection's token, recorded in
	// the agent's record with the credential it proves.
	sum string
	// awaitingFull: the agent was asked for its full state by the
	// fleet's queue (fullstate.go) and has not sent it.
	awaitingFull atomic.Bool
}

// New creates the server.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Auth == nil {
		return nil, errors.New("opamp: Store and Auth are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.CredentialTTL <= 0 {
		o.CredentialTTL = 24 * time.Hour
	}
	if o.RotateAt <= 0 || o.RotateAt >= 1 {
		o.RotateAt = 2.0 / 3
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 19000
	}
	if o.MaxPendingHandshakes <= 0 {
		o.MaxPendingHandshakes = 2048
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 4 << 20
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RotationRate <= 0 {
		o.RotationRate = 100
	}
	o.Callbacks.SetDefaults()
	s := &Server{o: o, log: o.Logger, conns: map[string]*conn{}, byJTI: map[string][]*conn{}, recorded: map[[16]byte]recordedCredential{}, jobs: make(chan func())}
	s.idle = sync.NewCond(&s.mu)
	s.fullStates.init()
	s.stop = make(chan struct{})
	go s.askFullStates(s.stop)
	// Enough concurrent store calls for the group commit of agent
	// updates to fill its batches in a reconnect storm.
	for i := 0; i < storeWorkers; i++ {
		go s.worker()
	}
	s.m = metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetprof_opamp_connected_agents", Help: "Agents holding a WebSocket connection."}),
		credentialChecks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_credential_checks_total",
			Help: "WebSocket connections accepted, by how their token was checked: its signature, or the agent credential's recorded SHA-256 (recorded)."}, []string{"how"}),
		rejected:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_rejected_total", Help: "OpAMP connections refused, by HTTP status."}, []string{"code"}),
		enrollments: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_opamp_enrollments_total", Help: "Agents enrolled with a bootstrap token."}),
		recordCache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_agent_record_reads_total", Help: "Agent records a status report started from: read from the store (read), kept by the connection since its last report (hit), or listed at the fleet's start (preloaded, an agent's first report after a restart)."}, []string{"source"}),
		messages:    prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_opamp_messages_total", Help: "AgentToServer messages handled."}),
		fullStateAsks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_full_state_requests_total",
			Help: "Agents asked for their full state: in the answer to a message (at_once: a sequence gap, a first message that is not empty), or queued until the handshakes pause (deferred: an agent back on a new WebSocket)."}, []string{"when"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_websocket_handshakes_total",
			Help: "WebSocket handshakes accepted, by who read them: the OpAMP server's poller (poller: plain TCP on Linux) or net/http (net_http: TLS, or no epoll)."}, []string{"path"}),
		offers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_credential_offers_total", Help: "Credentials offered, by reason."}, []string{"reason"}),
		configStatus: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetprof_opamp_config_status_stored_total",
			Help: "Remote config statuses stored in agent records, by status (APPLYING, APPLIED, FAILED): each a report of another config or status than the record held."}, []string{"status"}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.connected, s.m.rejected, s.m.enrollments, s.m.recordCache, s.m.messages, s.m.offers, s.m.credentialChecks, s.m.configStatus, s.m.fullStateAsks, s.m.handshakes} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register opamp metrics: %w", err)
			}
		}
	}
	srv := opampserver.New(&zapLogger{o.Logger.Sugar()})
	h, cc, err := srv.Attach(opampserver.Settings{Callbacks: types.Callbacks{OnConnecting: s.onConnecting}})
	if err != nil {
		return nil, fmt.Errorf("attach opamp server: %w", err)
	}
	// opamp-go serves the plain-HTTP transport; WebSockets are ours
	// (ws.go): same handlers, no goroutine or buffer per idle agent.
	plain := s.limitBody(closePlain(http.HandlerFunc(h)))
	s.poll = newPoller(o.Logger)
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isWebSocket(r) {
			s.serveWS(w, r)
			return
		}
		plain.ServeHTTP(w, r)
	})
	s.connCtx = cc
	o.Auth.OnRevoke(s.closeCredential)
	return s, nil
}

// Handler is the http.Handler to mount at Path.
func (s *Server) Handler() http.Handler { return s.handler }

// ConnContext must be set as the http.Server's ConnContext (it lets the
// plain-HTTP transport reach the connection).
func (s *Server) ConnContext(ctx context.Context, c netConn) context.Context {
	return s.connCtx(ctx, c)
}

// limitBody decompresses gzip bodies of the plain-HTTP transport itself,
// with a bound, so a small gzip bomb cannot balloon in opamp-go.
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/x-protobuf" {
			next.ServeHTTP(w, r)
			return
		}
		body := io.Reader(http.MaxBytesReader(w, r.Body, s.o.MaxMessageBytes))
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(body)
			if err != nil {
				http.Error(w, "opamp: bad gzip body", http.StatusBadRequest)
				return
			}
			body = zr
			r.Header.Del("Content-Encoding")
		}
		b, err := io.ReadAll(io.LimitReader(body, s.o.MaxMessageBytes+1))
		if err != nil {
			http.Error(w, "opamp: read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if int64(len(b)) > s.o.MaxMessageBytes {
			http.Error(w, fmt.Sprintf("opamp: message larger than %d bytes", s.o.MaxMessageBytes), http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		next.ServeHTTP(w, r)
	})
}

func retryAfter(base int) map[string]string {
	// Jitter spreads a herd of refused agents over the next interval.
	return map[string]string{"Retry-After": strconv.Itoa(base + rand.IntN(base+1))}
}

func (s *Server) refuse(code int, hdr map[string]string) types.ConnectionResponse {
	s.m.rejected.WithLabelValues(strconv.Itoa(code)).Inc()
	return types.ConnectionResponse{Accept: false, HTTPStatusCode: code, HTTPResponseHeader: hdr}
}

func (s *Server) onConnecting(r *http.Request) types.ConnectionResponse {
	resp, _ := s.accept(r.Context(), requestOf(r))
	return resp
}

// request is what accept reads of a connection's HTTP request.
type request struct {
	authorization string
	contentType   string
	remote        string
}

// requestOf is what accept reads of r.
func requestOf(r *http.Request) request {
	return request{authorization: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type"), remote: r.RemoteAddr}
}

// accept decides on a connection; c is its state when accepted.
func (s *Server) accept(ctx context.Context, r request) (_ types.ConnectionResponse, c *conn) {
	s.lastHandshake.Store(time.Now().UnixNano())
	if !s.waitListing(ctx) {
		return s.refuse(http.StatusServiceUnavailable, retryAfter(1)), nil
	}
	if n := s.pending.Add(1); n > int64(s.o.MaxPendingHandshakes) {
		s.pending.Add(-1)
		return s.refuse(http.StatusTooManyRequests, retryAfter(1)), nil
	}
	defer s.pending.Add(-1)
	ws := r.contentType != "application/x-protobuf"
	s.mu.Lock()
	full, closed := len(s.conns) >= s.o.MaxConnections, s.closed
	s.mu.Unlock()
	if closed {
		return s.refuse(http.StatusServiceUnavailable, retryAfter(5)), nil
	}
	if ws && full {
		return s.refuse(http.StatusServiceUnavailable, retryAfter(15)), nil
	}
	raw, ok := auth.Bearer(r.authorization)
	if !ok {
		s.log.Info("opamp connection refused", zap.String("remote", r.remote), zap.String("reason", "no bearer token"))
		return s.refuse(http.StatusUnauthorized, nil), nil
	}
	sum := token.Sum(raw)
	claims, err := s.verify(ctx, raw, sum, ws)
	if err == nil {
		switch claims.Kind() {
		case token.KindBootstrap, token.KindAgent:
		default:
			err = fmt.Errorf("a %s token cannot connect an agent: %w", claims.Kind(), token.ErrScope)
		}
	}
	if err != nil {
		s.log.Info("opamp connection refused", zap.String("remote", r.remote), zap.Error(err))
		return s.refuse(http.StatusUnauthorized, nil), nil
	}
	c = &conn{s: s, claims: claims, ws: ws, sum: hex.EncodeToString(sum[:])}
	return types.ConnectionResponse{Accept: true, ConnectionCallbacks: types.ConnectionCallbacks{
		OnConnected:       c.onConnected,
		OnMessage:         c.onMessage,
		OnConnectionClose: c.onClose,
		OnReadMessageError: func(_ types.Connection, _ int, b []byte, err error) {
			s.log.Debug("malformed opamp frame", zap.String("agent", c.agentID), zap.Int("bytes", len(b)), zap.Error(err))
		},
	}}, c
}

// verify authenticates a connection's token (sum is its token.Sum). A
// WebSocket agent's credential is checked against the credential this
// fleet recorded for the agent (its jti and sum, held in memory, loaded
// at start by LoadRecorded and kept as the fleet records credentials):
// the very token the fleet accepted before needs no second signature
// check. A reconnect storm after a restart is then a hash and a map
// lookup per agent, not an Ed25519 verification. A record that is stale
// (another replica rotated the credential) only means a full check.
// Plain-HTTP agents, whose every poll is a request, are verified fully,
// as are bootstrap tokens.
func (s *Server) verify(ctx context.Context, raw string, sum [32]byte, ws bool) (*token.Claims, error) {
	if !ws {
		return s.o.Auth.Verify(ctx, raw)
	}
	fast := false
	claims, err := s.o.Auth.VerifyRecorded(ctx, raw, func(c *token.Claims) ([32]byte, bool) {
		// c is unverified: it only names the record to compare with.
		if c.Kind() != token.KindAgent {
			return [32]byte{}, false
		}
		r, ok := s.recordedFor(c.Subject, c.ID)
		if !ok {
			return [32]byte{}, false
		}
		fast = r == sum
		return r, true
	})
	if err != nil {
		return nil, err
	}
	how := "signature"
	if fast {
		how = "recorded"
	}
	s.m.credentialChecks.WithLabelValues(how).Inc()
	return claims, nil
}

// recordedCredential is an agent's current credential as recorded: its
// jti (a UUID) and the SHA-256 of the token.
type recordedCredential struct {
	jti [16]byte
	sum [32]byte
}

// recordedFor returns the sum recorded for the agent's credential jti.
func (s *Server) recordedFor(agentID, jti string) ([32]byte, bool) {
	id, ok := instanceUID(agentID)
	if !ok {
		return [32]byte{}, false
	}
	j, err := uuid.Parse(jti)
	if err != nil {
		return [32]byte{}, false
	}
	s.recMu.RLock()
	r, ok := s.recorded[id]
	s.recMu.RUnlock()
	if !ok || r.jti != j {
		return [32]byte{}, false
	}
	return r.sum, true
}

// record notes an agent's current credential (jti and hex sum as stored).
func (s *Server) record(agentID, jti, hexSum string) {
	var r recordedCredential
	id, ok := instanceUID(agentID)
	if !ok || len(hexSum) != 64 {
		return
	}
	if _, err := hex.Decode(r.sum[:], []byte(hexSum)); err != nil {
		return
	}
	j, err := uuid.Parse(jti)
	if err != nil {
		return
	}
	r.jti = j
	s.recMu.RLock()
	same := s.recorded[id] == r
	s.recMu.RUnlock()
	if same {
		return
	}
	s.recMu.Lock()
	s.recorded[id] = r
	s.recMu.Unlock()
}

// LoadRecorded loads the credentials the fleet recorded for its agents
// (one listing), so that a restart's reconnect storm is checked on them;
// until it ran, every credential is verified by its signature. It may
// run while the server serves (LoadRecordedWhileServing holds the
// handshakes meanwhile): an entry it writes over a newer one is merely
// stale, which costs a full check.
//
// It keeps the listed records too, for preloadFor: the first status
// report of each agent (in a reconnect storm, every agent's) starts from
// its record instead of reading it. A record changed since is caught by
// its row version when the report writes, and read again.
func (s *Server) LoadRecorded(ctx context.Context) error {
	creds, err := s.o.Store.ListAgentCredentials(ctx)
	if err != nil {
		return fmt.Errorf("load recorded agent credentials: %w", err)
	}
	pre := make(map[[16]byte]preloadedRecord, len(creds))
	for _, c := range creds {
		s.record(c.AgentID, c.CredentialID, c.CredentialHash)
		if id, ok := instanceUID(c.AgentID); ok && c.Record != "" {
			pre[id] = preloadedRecord{doc: c.Record, version: c.RowVersion}
		}
	}
	s.preMu.Lock()
	s.preloaded = pre
	s.preMu.Unlock()
	time.AfterFunc(preloadFor, func() {
		s.preMu.Lock()
		s.preloaded = nil
		s.preMu.Unlock()
	})
	return nil
}

// LoadRecordedWhileServing runs LoadRecorded in the background and calls
// done with its error. Until it is over, handshakes wait for it before
// they count as pending, and are then checked on what it listed. The
// fleet serves meanwhile: in a restart's reconnect storm the connections
// that arrive during the listing are accepted and wait in the process,
// not in the kernel's listen queue, whose overflow costs each agent a
// TCP retransmission (a second or more).
func (s *Server) LoadRecordedWhileServing(ctx context.Context, done func(error)) {
	ch := make(chan struct{})
	s.listing.Store(&ch)
	go func() {
		err := s.LoadRecorded(ctx)
		s.listing.Store(nil)
		close(ch)
		done(err)
	}()
}

// waitListing waits for the listing of LoadRecordedWhileServing, if one
// is running; false if the handshake ended first.
func (s *Server) waitListing(ctx context.Context) bool {
	ch := s.listing.Load()
	if ch == nil {
		return true
	}
	select {
	case <-*ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// preloadFor is how long the records LoadRecorded listed are kept for the
// agents' first reports: a reconnect storm of 19,000 agents is over in
// seconds; an agent that comes back later reads its record.
const preloadFor = 2 * time.Minute

// preloadedRecord is an agent's record as listed at the start.
type preloadedRecord struct {
	doc     string
	version int64
}

// takePreloaded returns the agent's record as listed at the start, once,
// or nil.
func (s *Server) takePreloaded(agentID string) *store.Agent {
	id, ok := instanceUID(agentID)
	if !ok {
		return nil
	}
	s.preMu.Lock()
	p, ok := s.preloaded[id]
	if ok {
		delete(s.preloaded, id)
	}
	s.preMu.Unlock()
	if !ok {
		return nil
	}
	a, err := store.DecodeAgent(p.doc, p.version)
	if err != nil || a.ID != agentID {
		return nil // read from the store, which reports what is wrong
	}
	return a
}

// dropPreloaded forgets the record of agentID listed at the start.
func (s *Server) dropPreloaded(agentID string) {
	id, ok := instanceUID(agentID)
	if !ok {
		return
	}
	s.preMu.Lock()
	delete(s.preloaded, id)
	s.preMu.Unlock()
}

// MarkGone marks disconnected the agents whose record says connected but
// that hold no connection here: run by the store's sole writer
// (SoleWriter) a while after its start, the agents that were connected
// before a crash and did not come back. An agent that does come back
// needs no write for it (its first report writes nothing when nothing
// changed); one that comes back while it is marked reads the mark and
// writes itself connected. It returns how many it marked.
func (s *Server) MarkGone(ctx context.Context) (int, error) {
	as, err := s.o.Store.ListAgents(ctx, store.AgentFilter{Brief: true, Match: func(a *store.Agent) bool { return a.Connected }})
	if err != nil {
		return 0, fmt.Errorf("mark agents gone: %w", err)
	}
	n := 0
	for _, b := range as {
		if s.isLive(b.ID) {
			continue
		}
		a, err := s.updateAgent(ctx, b.ID, func(a *store.Agent) error {
			// Under the agent's lock, which its first report takes
			// after registering the connection.
			if !a.Connected || s.isLive(a.ID) {
				return errNoChange
			}
			a.Connected = false
			return nil
		})
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("mark agent %s gone: %w", b.ID, err)
		}
		if a != nil {
			n++
			s.o.Callbacks.OnAgentStatus(a)
		}
	}
	return n, nil
}

// instanceUID parses an agent id (the hex instance uid).
func instanceUID(agentID string) ([16]byte, bool) {
	var id [16]byte
	if len(agentID) != 32 {
		return id, false
	}
	if _, err := hex.Decode(id[:], []byte(agentID)); err != nil {
		return id, false
	}
	return id, true
}

func (c *conn) onConnected(_ context.Context, tc types.Connection) { c.c = tc }

func (c *conn) onClose(types.Connection) {
	s := c.s
	if c.awaitingFull.CompareAndSwap(true, false) {
		s.fullStates.took()
	}
	if c.agentID == "" || !c.ws {
		return
	}
	s.mu.Lock()
	if s.conns[c.agentID] == c {
		delete(s.conns, c.agentID)
	}
	list := s.byJTI[c.claims.ID]
	for i, x := range list {
		if x == c {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.byJTI, c.claims.ID)
	} else {
		s.byJTI[c.claims.ID] = list
	}
	s.m.connected.Set(float64(len(s.conns)))
	s.mu.Unlock()
	if !s.begin() {
		return // shut down: the next start marks every agent disconnected
	}
	defer s.end()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := s.updateAgent(ctx, c.agentID, func(a *store.Agent) error {
		// Another connection of the same agent may have taken over.
		if s.isLive(c.agentID) {
			return errNoChange
		}
		a.Connected = false
		a.LastSeen = s.o.Now().UTC()
		return nil
	})
	if err == nil && a != nil {
		s.o.Callbacks.OnAgentStatus(a)
	}
}

func (s *Server) isLive(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.conns[id]
	return ok
}

func (c *conn) register() {
	s := c.s
	s.mu.Lock()
	old := s.conns[c.agentID]
	s.conns[c.agentID] = c
	s.byJTI[c.claims.ID] = append(s.byJTI[c.claims.ID], c)
	s.scanAt.Store(0)
	s.m.connected.Set(float64(len(s.conns)))
	s.mu.Unlock()
	if old != nil && old != c && old.c != nil {
		// The agent reconnected; the old socket is stale.
		_ = old.c.Disconnect()
	}
}

func (c *conn) fail(msg string) *protobufs.ServerToAgent {
	c.s.log.Info("opamp agent refused", zap.String("agent", c.agentID), zap.String("reason", msg))
	if c.c != nil && c.ws {
		go func(tc types.Connection) {
			time.Sleep(100 * time.Millisecond)
			_ = tc.Disconnect()
		}(c.c)
	}
	return &protobufs.ServerToAgent{ErrorResponse: &protobufs.ServerErrorResponse{
		Type: protobufs.ServerErrorResponseType_ServerErrorResponseType_BadRequest, ErrorMessage: msg,
	}}
}

const serverCaps = uint64(protobufs.ServerCapabilities_ServerCapabilities_AcceptsStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersRemoteConfig |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsEffectiveConfig |
	protobufs.ServerCapabilities_ServerCapabilities_OffersPackages |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsPackagesStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersConnectionSettings |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsConnectionSettingsRequest)

var errNoChange = errors.New("no change")

func (c *conn) onMessage(ctx context.Context, tc types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
	s := c.s
	s.m.messages.Inc()
	if c.c == nil {
		c.c = tc
	}
	if nc := tc.Connection(); nc != nil {
		_ = nc.SetWriteDeadline(s.o.Now().Add(s.o.WriteTimeout))
	}
	if len(msg.InstanceUid) != 16 {
		return c.fail(fmt.Sprintf("instance_uid must be 16 bytes, got %d", len(msg.InstanceUid)))
	}
	var hexUID [32]byte // no allocation per message once the agent is known
	hex.Encode(hexUID[:], msg.InstanceUid)
	if c.agentID == "" {
		id := string(hexUID[:])
		if c.claims.Kind() == token.KindAgent && c.claims.Subject != id {
			return c.fail("credential belongs to another agent")
		}
		c.agentID = id
		if c.ws {
			c.register()
		}
	} else if c.agentID != string(hexUID[:]) {
		return c.fail("instance_uid changed within a connection")
	}
	id := c.agentID
	if msg.AgentDescription != nil && c.awaitingFull.CompareAndSwap(true, false) {
		s.fullStates.took()
	}
	resp := &protobufs.ServerToAgent{InstanceUid: msg.InstanceUid, Capabilities: serverCaps}
	// Sequence gaps mean we missed state: ask for all of it.
	first := !c.haveSeq
	if (c.haveSeq && msg.SequenceNum != c.lastSeq+1) || (first && msg.AgentDescription == nil) {
		resp.Flags |= uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)
	}
	c.lastSeq, c.haveSeq = msg.SequenceNum, true

	if first && c.ws && c.claims.Kind() == token.KindAgent && empty(msg) {
		// An agent back on a new WebSocket (a fleet restart's reconnect
		// storm) goes on with its sequence and says nothing: its full
		// state is asked for once the handshakes pause (fullstate.go),
		// and stored when it comes. Storing this message too was a
		// write, and then a read to judge the full state against the
		// store (a third of the fleet's CPU in a storm of 19,000
		// agents). Until then the agent is connected here (it gets
		// pushes) but its record says so only with its full state.
		// Nothing is answered now: the ask carries the server's
		// capabilities, and a WebSocket agent waits for no answer (an
		// answer now was one more message each way per agent).
		s.fullStates.push(c, time.Now())
		return nil
	}
	if resp.Flags&uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState) != 0 {
		s.m.fullStateAsks.WithLabelValues("at_once").Inc()
	}

	if c.claims.Kind() == token.KindAgent && c.quiet(msg, s.o.Now()) {
		// Most messages of a fleet: nothing to store, nothing to answer.
		// The record kept from the last status report stays (about 1.3
		// KiB per agent): the next report, a push's APPLIED most likely,
		// starts from it instead of a store read, which was a fifth of
		// the fleet's CPU in a push to 19,000 agents.
		return resp
	}
	var offer *protobufs.ConnectionSettingsOffers
	var err error
	// Store work runs on a bounded pool of workers; the store's time limit
	// starts when a worker takes the message, not while it waits in a
	// reconnect storm (a message that waited is not the store's fault).
	ran := s.work(func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		switch c.claims.Kind() {
		case token.KindBootstrap:
			offer, err = c.enroll(ctx, msg)
		case token.KindAgent:
			offer, err = c.update(ctx, msg)
		}
	})
	if !ran {
		return resp // shutting down: the connection is being closed
	}
	if err != nil {
		var re refusal
		if errors.As(err, &re) {
			return c.fail(string(re))
		}
		s.log.Error("handle opamp message", zap.String("agent", id), zap.Error(err))
		resp.ErrorResponse = &protobufs.ServerErrorResponse{
			Type:         protobufs.ServerErrorResponseType_ServerErrorResponseType_Unavailable,
			ErrorMessage: "fleet store unavailable, retry",
			Details: &protobufs.ServerErrorResponse_RetryInfo{RetryInfo: &protobufs.RetryInfo{
				RetryAfterNanoseconds: uint64(2*time.Second + rand.N(3*time.Second)),
			}},
		}
		return resp
	}
	if msg.PackageStatuses != nil && c.claims.Kind() == token.KindAgent {
		s.o.Callbacks.OnPackageStatuses(id, msg.PackageStatuses)
	}
	resp.ConnectionSettings = offer
	return resp
}

// refusal is an error that is the agent's fault: reported and disconnected.
type refusal string

func (r refusal) Error() string { return string(r) }

// applyDescription applies what a report says to the agent's record. An
// effective config that is exactly the canonical JSON of the config the
// agent reports (configJSON, when not nil) is recorded by reference to it
// (EffectiveConfigHash) instead of in full: most of a fleet runs its
// assigned config, and in full it was half of every record's bytes.
func applyDescription(a *store.Agent, msg *protobufs.AgentToServer, now time.Time, configJSON func(projectID, hash string) []byte) {
	a.LastSeen = now
	if msg.AgentDescription != nil {
		d := describe.Decode(msg.AgentDescription)
		a.Hostname, a.Platform, a.Version = d.Hostname, d.Platform, d.Version
		desc := describe.Attributes(msg.AgentDescription)
		// Which labels came from the bootstrap token is the fleet's
		// note, not the agent's: it outlives the agent's descriptions.
		for k, v := range a.Description {
			if strings.HasPrefix(k, store.TokenLabelAttr) {
				desc[k] = v
			}
		}
		a.Description = desc
		labels := d.SelectorLabels()
		// Labels of the bootstrap token are kept and win: they are what
		// the operator assigned.
		for k, v := range a.Labels {
			if _, fromAgent := labels[k]; !fromAgent || isTokenLabel(a, k) {
				labels[k] = v
			}
		}
		// Labels set in the console win, except over the well-known ones.
		for k, v := range a.CustomLabels {
			if !slices.Contains(store.WellKnownLabels, k) {
				labels[k] = v
			}
		}
		a.Labels = labels
	}
	if h := msg.Health; h != nil {
		a.Healthy = h.Healthy
		a.Health = h.Status
		if h.LastError != "" {
			a.Health = h.LastError
		}
	}
	if st := msg.RemoteConfigStatus; st != nil {
		a.ConfigHash = hex.EncodeToString(st.LastRemoteConfigHash)
		a.ConfigStatus = remoteStatusName(st.Status)
		a.ConfigError = st.ErrorMessage
	}
	if ec := msg.EffectiveConfig; ec != nil && ec.ConfigMap != nil {
		if f := ec.ConfigMap.ConfigMap[""]; f != nil {
			switch {
			case len(f.Body) > 0 && a.ConfigHash != "" && configJSON != nil && bytes.Equal(f.Body, configJSON(a.ProjectID, a.ConfigHash)):
				a.EffectiveConfig, a.EffectiveConfigHash = "", a.ConfigHash
			case len(f.Body) > 0 && a.EffectiveConfigHash != "" && configJSON != nil && bytes.Equal(f.Body, configJSON(a.ProjectID, a.EffectiveConfigHash)):
				// Still the config referred to: a push that FAILED left
				// the agent on it.
			case string(f.Body) != a.EffectiveConfig || a.EffectiveConfigHash != "":
				a.EffectiveConfig, a.EffectiveConfigHash = store.Intern(string(f.Body)), ""
			}
		}
	}
}

func isTokenLabel(a *store.Agent, k string) bool {
	_, ok := a.Description[store.TokenLabelAttr+k]
	return ok
}

func remoteStatusName(s protobufs.RemoteConfigStatuses) string {
	switch s {
	case protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED:
		return "APPLIED"
	case protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING:
		return "APPLYING"
	case protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED:
		return "FAILED"
	}
	return ""
}

// enroll handles a message on a bootstrap-token connection: record the
// agent (once: the instance uid is its identity) and offer a credential.
func (c *conn) enroll(ctx context.Context, msg *protobufs.AgentToServer) (*protobufs.ConnectionSettingsOffers, error) {
	s := c.s
	now := s.o.Now().UTC()
	if c.offered.Load() {
		a, err := s.updateAgent(ctx, c.agentID, func(a *store.Agent) error {
			applyDescription(a, msg, now, s.o.ConfigJSON)
			a.Connected = c.ws
			return nil
		})
		if err == nil && a != nil {
			s.o.Callbacks.OnAgentStatus(a)
		}
		return nil, err
	}
	existing, err := s.o.Store.AgentByID(ctx, c.agentID)
	switch {
	case err == nil:
		if existing.ProjectID != c.claims.ProjectID {
			return nil, refusal("agent id is enrolled in another project")
		}
		if existing.Revoked {
			return nil, refusal("this agent was revoked; an operator must re-admit it (POST .../agents/{id}/readmit) before it can enroll again")
		}
	case errors.Is(err, store.ErrNotFound):
		if err := s.o.Store.UseToken(ctx, c.claims.ID, now); err != nil {
			if errors.Is(err, store.ErrExhausted) {
				return nil, refusal("bootstrap token has no enrollments left")
			}
			if !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
		}
		a := &store.Agent{ID: c.agentID, ProjectID: c.claims.ProjectID, EnrolledWith: c.claims.ID, Labels: map[string]string{}, CreatedAt: now}
		for k, v := range c.claims.Labels {
			a.Labels[k] = v
		}
		applyDescription(a, msg, now, s.o.ConfigJSON)
		a.Connected = c.ws
		if a.Description == nil {
			a.Description = map[string]string{}
		}
		for k := range c.claims.Labels {
			a.Description[store.TokenLabelAttr+k] = c.claims.Labels[k]
		}
		if err := s.o.Store.UpsertAgent(ctx, a); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		s.m.enrollments.Inc()
		s.log.Info("agent enrolled", zap.String("agent", c.agentID), zap.String("project", a.ProjectID), zap.String("platform", a.Platform))
	default:
		return nil, err
	}
	c.offered.Store(true)
	// (Re-)enrollment: offer a fresh credential. Older pending candidates
	// of this agent are revoked; its current credential stays valid until
	// the new one is proven.
	return s.offerCredential(ctx, c.agentID, "enroll", func(a *store.Agent) {
		applyDescription(a, msg, now, s.o.ConfigJSON)
		if c.ws {
			a.Connected = true
		}
	})
}

// update handles a message on an agent-credential connection.
func (c *conn) update(ctx context.Context, msg *protobufs.AgentToServer) (*protobufs.ConnectionSettingsOffers, error) {
	s := c.s
	now := s.o.Now().UTC()
	jti := c.claims.ID
	// (A quiet message never gets here: onMessage answered it.)
	var revokeOld string
	var needOffer, failed bool
	var failMsg string
	if st := msg.ConnectionSettingsStatus; st != nil && st.Status == protobufs.ConnectionSettingsStatuses_ConnectionSettingsStatuses_FAILED {
		failed, failMsg = true, st.ErrorMessage
	}
	var newStatus bool
	a, err := s.updateAgentVia(ctx, c.agentID, &c.rec, func(a *store.Agent) error {
		// fn may run again on a fresh read: decide from this one only.
		revokeOld, needOffer = "", false
		before := *a
		applyDescription(a, msg, now, s.o.ConfigJSON)
		newStatus = a.ConfigStatus != "" && (a.ConfigStatus != before.ConfigStatus || a.ConfigHash != before.ConfigHash)
		if c.ws {
			a.Connected = true
		}
		switch {
		case jti == a.PendingCredentialID:
			// The agent proved the candidate: it becomes current and the
			// old one is retired.
			a.RotationStatus, a.RotationError = "rotated", ""
			if a.CredentialID == "" {
				a.RotationStatus = "" // the first credential: an enrollment, not a rotation
			} else if a.CredentialID != jti {
				revokeOld = a.CredentialID
			}
			a.CredentialID, a.PendingCredentialID = jti, ""
			a.CredentialExpiresAt = c.expiry()
		case jti == a.CredentialID:
			if a.CredentialExpiresAt == nil {
				a.CredentialExpiresAt = c.expiry()
			}
			if failed && a.PendingCredentialID != "" {
				a.RotationStatus, a.RotationError = "failed", failMsg
			}
		case a.CredentialID == "":
			a.CredentialID, a.CredentialExpiresAt = jti, c.expiry()
		}
		if jti == a.CredentialID {
			a.CredentialHash = c.sum
		}
		if a.RotationStatus == "pending" && jti == a.CredentialID && !failed && !c.offered.Load() {
			// A candidate was issued but this connection never saw it
			// (e.g. the fleet restarted): offer a new one.
			needOffer = true
		}
		if c.claims.ExpiresAt != nil && a.PendingCredentialID == "" && jti == a.CredentialID {
			life := c.claims.ExpiresAt.Time.Sub(c.claims.IssuedAt.Time)
			if !c.offered.Load() && now.After(c.claims.IssuedAt.Time.Add(time.Duration(float64(life)*s.o.RotateAt))) {
				needOffer = true
			}
		}
		// A new connection's record was last written at its last-seen
		// time: an agent back within lastSeenEvery (a fleet restart's
		// reconnect storm) whose state is what the record holds writes
		// nothing.
		since := c.lastWrite
		if since.IsZero() {
			since = before.LastSeen
		}
		if !changed(&before, a, since, now) && !needOffer && revokeOld == "" {
			return errNoChange
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, refusal("agent is not enrolled (deleted?); re-enroll with a bootstrap token")
		}
		return nil, err
	}
	if a != nil {
		c.lastWrite = now
		if newStatus {
			s.m.configStatus.WithLabelValues(a.ConfigStatus).Inc()
		}
	} else if c.lastWrite.IsZero() && c.rec != nil {
		// The connection's first report, and the record was right: it
		// is what the rollouts and this connection go on from, as if
		// written.
		a = c.rec
		c.lastWrite = a.LastSeen
	}
	if a != nil {
		if a.CredentialHash != "" {
			s.record(a.ID, a.CredentialID, a.CredentialHash)
		}
		s.o.Callbacks.OnAgentStatus(a)
		c.steady = a.CredentialID == jti && a.PendingCredentialID == "" && a.RotationStatus != "pending" && !needOffer
	}
	if revokeOld != "" {
		// Do not cut this connection: it uses the new credential.
		if err := s.o.Auth.Revoke(ctx, revokeOld); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("revoke superseded credential", zap.String("agent", c.agentID), zap.Error(err))
		}
		s.log.Info("agent credential rotated", zap.String("agent", c.agentID))
	}
	if needOffer {
		c.offered.Store(true)
		return s.offerCredential(ctx, c.agentID, "rotate", nil)
	}
	return nil, nil
}

// heartbeat takes msg without blocking when onMessage would only count
// it (a quiet message in sequence on a known agent's connection), and
// reports whether it did; otherwise msg is for onMessage. The WebSocket
// poller calls it inline (onMessage's goroutine rules apply).
func (c *conn) heartbeat(msg *protobufs.AgentToServer) bool {
	if c.c == nil || c.agentID == "" || len(msg.InstanceUid) != 16 || !c.haveSeq || msg.SequenceNum != c.lastSeq+1 ||
		c.claims.Kind() != token.KindAgent || !c.quiet(msg, c.s.o.Now()) {
		return false
	}
	var hexUID [32]byte
	hex.Encode(hexUID[:], msg.InstanceUid)
	if c.agentID != string(hexUID[:]) {
		return false
	}
	c.s.m.messages.Inc()
	c.lastSeq = msg.SequenceNum
	return true
}

// quiet reports whether msg is a bare heartbeat on a settled connection:
// it changes nothing worth a store read (last-seen is still written every
// lastSeenEvery; while connected, "connected" is what counts, and the
// disconnect writes the exact time).
func (c *conn) quiet(msg *protobufs.AgentToServer, now time.Time) bool {
	return c.steady && empty(msg) && now.Sub(c.lastWrite) < lastSeenEvery
}

// empty reports whether msg carries no state: a heartbeat.
func empty(msg *protobufs.AgentToServer) bool {
	return msg.AgentDescription == nil && msg.Health == nil && msg.RemoteConfigStatus == nil &&
		msg.EffectiveConfig == nil && msg.ConnectionSettingsStatus == nil && msg.PackageStatuses == nil &&
		msg.AgentDisconnect == nil && msg.CustomCapabilities == nil && msg.CustomMessage == nil
}

func (c *conn) expiry() *time.Time {
	if c.claims.ExpiresAt == nil {
		return nil
	}
	t := c.claims.ExpiresAt.Time.UTC()
	return &t
}

// storeWorkers bounds the OpAMP messages doing store work at once.
const storeWorkers = 128

// lastSeenEvery is how often the last-seen time of a connected agent is
// written when nothing else changed. At 19,000 agents a minute meant 316
// store writes a second for nothing an operator reads.
const lastSeenEvery = 5 * time.Minute

// changed reports whether a record differs in a way worth a write; the
// last-seen time alone is written at most every lastSeenEvery.
func changed(b, a *store.Agent, lastWrite, now time.Time) bool {
	if now.Sub(lastWrite) > lastSeenEvery {
		return true
	}
	if b.Connected != a.Connected || b.Healthy != a.Healthy || b.Health != a.Health || b.Version != a.Version ||
		b.Platform != a.Platform || b.Hostname != a.Hostname || b.ConfigHash != a.ConfigHash || b.ConfigStatus != a.ConfigStatus ||
		b.ConfigError != a.ConfigError || b.EffectiveConfig != a.EffectiveConfig || b.EffectiveConfigHash != a.EffectiveConfigHash || b.CredentialID != a.CredentialID || b.CredentialHash != a.CredentialHash ||
		b.PendingCredentialID != a.PendingCredentialID || b.RotationStatus != a.RotationStatus || b.RotationError != a.RotationError {
		return true
	}
	return !maps.Equal(b.Labels, a.Labels) || !maps.Equal(b.Description, a.Description)
}

func (s *Server) agentLock(id string) *sync.Mutex {
	m, _ := s.locks.LoadOrStore(id, &sync.Mutex{})
	return m.(*sync.Mutex)
}

// updateAgent loads, mutates and stores an agent record, retrying on a
// concurrent write. fn returning errNoChange skips the write (and the
// result is nil, nil).
func (s *Server) updateAgent(ctx context.Context, id string, fn func(a *store.Agent) error) (*store.Agent, error) {
	return s.updateAgentVia(ctx, id, nil, fn)
}

// updateAgentVia is updateAgent starting from *cache, when set, instead of
// a store read: the record this connection last read or wrote. A record
// changed since by anyone else has another row version, so the write
// fails with ErrConflict and the retry reads the store. *cache is left
// holding the stored record (never mutated: fn gets a copy), or nil.
// Only the goroutine serving the connection's messages may pass its cache.
func (s *Server) updateAgentVia(ctx context.Context, id string, cache **store.Agent, fn func(a *store.Agent) error) (*store.Agent, error) {
	mu := s.agentLock(id)
	mu.Lock()
	defer mu.Unlock()
	if cache == nil {
		// Written by another path than the connection's own: the record
		// listed at the start is no longer the record.
		s.dropPreloaded(id)
	}
	for attempt := 0; attempt < 5; attempt++ {
		var stored *store.Agent
		fromCache, preloaded := false, false
		if cache != nil && attempt == 0 {
			if *cache != nil {
				fromCache = true
				s.m.recordCache.WithLabelValues("hit").Inc()
			} else if a := s.takePreloaded(id); a != nil {
				*cache, fromCache, preloaded = a, true, true
				s.m.recordCache.WithLabelValues("preloaded").Inc()
			}
		}
		if fromCache {
			stored = *cache
		} else {
			a, err := s.o.Store.AgentByID(ctx, id)
			if err != nil {
				if cache != nil {
					*cache = nil
				}
				return nil, err
			}
			stored = a
			if cache != nil {
				s.m.recordCache.WithLabelValues("read").Inc()
			}
		}
		a := stored
		if cache != nil {
			a = stored.Clone()
		}
		if err := fn(a); err != nil {
			if errors.Is(err, errNoChange) && fromCache && !(preloaded && s.o.SoleWriter) {
				// Nothing to write judged from the kept record, which
				// someone else may have changed since (no write, so no
				// row-version check to tell): judge a fresh read. A
				// record listed at the start of the store's sole writer
				// is still the record: every other write of it here
				// dropped it (dropPreloaded).
				*cache = nil
				continue
			}
			if cache != nil {
				*cache = stored
			}
			if errors.Is(err, errNoChange) {
				return nil, nil
			}
			return nil, err
		}
		err := s.o.Store.UpsertAgent(ctx, a)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if cache != nil {
			*cache = nil
			if err == nil {
				*cache = a
			}
		}
		if err != nil {
			return nil, err
		}
		return a, nil
	}
	if cache != nil {
		*cache = nil
	}
	return nil, fmt.Errorf("update agent %s: %w", id, store.ErrConflict)
}

// offerCredential issues a candidate credential for an agent, records it
// as pending and returns the offer that carries it.
func (s *Server) offerCredential(ctx context.Context, agentID, reason string, mutate func(a *store.Agent)) (*protobufs.ConnectionSettingsOffers, error) {
	a, err := s.o.Store.AgentByID(ctx, agentID)
	if err != nil {
		return nil, err
	}
	raw, t, err := s.o.Auth.Issue(ctx, auth.IssueRequest{
		Kind: token.KindAgent, ProjectID: a.ProjectID, AgentID: agentID, Name: "agent " + agentID, TTL: s.o.CredentialTTL, CreatedBy: "fleet:" + reason,
	})
	if err != nil {
		return nil, fmt.Errorf("issue agent credential: %w", err)
	}
	var stale string
	if _, err := s.updateAgent(ctx, agentID, func(a *store.Agent) error {
		if mutate != nil {
			mutate(a)
		}
		if a.PendingCredentialID != "" && a.PendingCredentialID != a.CredentialID {
			stale = a.PendingCredentialID
		}
		a.PendingCredentialID = t.ID
		a.RotationStatus, a.RotationError = "pending", ""
		return nil
	}); err != nil {
		return nil, err
	}
	if stale != "" {
		if err := s.o.Auth.Revoke(ctx, stale); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("revoke unused candidate credential", zap.String("agent", agentID), zap.Error(err))
		}
	}
	if reason != "enroll" && s.o.FailRotation != nil && s.o.FailRotation(agentID) {
		_ = s.o.Auth.Revoke(ctx, t.ID)
	}
	s.m.offers.WithLabelValues(reason).Inc()
	return CredentialOffer(raw, s.o.HeartbeatInterval), nil
}

// CredentialOffer builds the ConnectionSettingsOffers carrying a
// credential for OpAMP and for profile uploads.
func CredentialOffer(raw string, heartbeat time.Duration) *protobufs.ConnectionSettingsOffers {
	hdr := &protobufs.Headers{Headers: []*protobufs.Header{{Key: "Authorization", Value: "Bearer " + raw}}}
	sum := sha256.Sum256([]byte(raw))
	return &protobufs.ConnectionSettingsOffers{
		Hash:             sum[:],
		Opamp:            &protobufs.OpAMPConnectionSettings{Headers: hdr, HeartbeatIntervalSeconds: uint64(heartbeat / time.Second)},
		OtherConnections: map[string]*protobufs.OtherConnectionSettings{"profiles": {Headers: hdr}},
	}
}

// Send pushes a message to a connected agent, with the write deadline.
func (s *Server) Send(ctx context.Context, agentID string, msg *protobufs.ServerToAgent) error {
	s.mu.Lock()
	c := s.conns[agentID]
	s.mu.Unlock()
	if c == nil || c.c == nil {
		return fmt.Errorf("send to agent %s: %w", agentID, ErrNotConnected)
	}
	return c.send(ctx, msg)
}

// send pushes a message to the agent on this connection, with the write
// deadline; a failed write ends the connection.
func (c *conn) send(ctx context.Context, msg *protobufs.ServerToAgent) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if nc := c.c.Connection(); nc != nil {
		_ = nc.SetWriteDeadline(c.s.o.Now().Add(c.s.o.WriteTimeout))
	}
	if msg.InstanceUid == nil {
		msg.InstanceUid, _ = hex.DecodeString(c.agentID)
	}
	msg.Capabilities = serverCaps
	if err := c.c.Send(ctx, msg); err != nil {
		_ = c.c.Disconnect()
		return fmt.Errorf("send to agent %s: %w", c.agentID, err)
	}
	return nil
}

// Connected lists the ids of agents connected here.
func (s *Server) Connected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.conns))
	for id := range s.conns {
		out = append(out, id)
	}
	return out
}

// closeCredential disconnects every connection that uses a revoked jti.
func (s *Server) closeCredential(jti string) {
	s.mu.Lock()
	list := append([]*conn(nil), s.byJTI[jti]...)
	s.mu.Unlock()
	for _, c := range list {
		if c.c != nil {
			s.log.Info("closing connection of revoked credential", zap.String("agent", c.agentID), zap.String("token", jti))
			_ = c.c.Disconnect()
		}
	}
}

// Shutdown refuses new connections, closes every open one and waits for
// the handlers' store work in flight, after which handlers skip store
// work: the caller may close the store.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	s.closed = true
	list := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		list = append(list, c)
	}
	s.mu.Unlock()
	for _, c := range list {
		if c.c != nil {
			_ = c.c.Disconnect()
		}
	}
	s.poll.stop()
	// Handlers still doing store work finish (each within its own
	// timeout) before Shutdown returns, so the caller may close the store.
	s.mu.Lock()
	for s.busy > 0 {
		s.idle.Wait()
	}
	s.drained = true
	s.mu.Unlock()
}
