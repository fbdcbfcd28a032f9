package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/ingest"
	"github.com/fleetprof/fleetprof/fleet/opamp"
	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/release"
	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/token"
	"github.com/fleetprof/fleetprof/internal/version"
)

// Options configures a fleet server.
type Options struct {
	DataDir     string // required; holds keys, the store and profiles
	HTTPAddress string // host:port; "" means 127.0.0.1:8080
	TLSCertFile string // with TLSKeyFile: serve HTTPS (and wss, HTTP/2)
	TLSKeyFile  string
	// PublicURL is how agents reach this fleet (iss claim, agent
	// commands); "" derives it from the listen address.
	PublicURL string
	// CredentialTTL of agent credentials; 0 means 24h.
	CredentialTTL time.Duration
	// MaxConnections of OpAMP agents; 0 means the opamp default.
	MaxConnections int
	// ProfileRetention is the maximum age of stored profiles; 0 means 15 days.
	ProfileRetention time.Duration
	// ProfileMaxBytes caps stored profile bytes; 0 means no cap.
	ProfileMaxBytes int64
	// ProfileS3, when its Endpoint is set, puts the profile blobs in that
	// bucket instead of DataDir/profiles/blobs. The index stays in
	// DataDir/profiles with Store "sqlite"; with "postgres" it goes to
	// PostgresDSN, shared by the replicas (give them the same bucket and
	// prefix).
	ProfileS3 profiles.S3Options
	// RotationRate paces bulk credential rotation (offers per second).
	RotationRate float64
	// AgentBinary is served at /download/fleetprof-agent for install.sh;
	// "" means fleetprof-agent beside the fleetprof binary.
	AgentBinary string
	// Store is the fleet store backend: "sqlite" ("" too; DataDir/fleet.db)
	// or "postgres" (PostgresDSN, shared by replicas).
	Store       string
	PostgresDSN string
	Logger      *zap.Logger
	// Ready, if set, receives the bound address once serving.
	Ready func(addr net.Addr)
}

// loadRecordedFor bounds the listing of recorded agent credentials at
// start (66–80 ms at 19,000 agents on SQLite), which agents' handshakes
// wait for: a slower store costs signature checks, not handshakes that
// hang.
const loadRecordedFor = 5 * time.Second

// Run serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if o.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if o.HTTPAddress == "" {
		o.HTTPAddress = "127.0.0.1:8080"
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together")
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	ln, err := net.Listen("tcp", o.HTTPAddress)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.HTTPAddress, err)
	}
	defer ln.Close()
	scheme := "http"
	if o.TLSCertFile != "" {
		scheme = "https"
	}
	if o.PublicURL == "" {
		o.PublicURL = scheme + "://" + ln.Addr().String()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rep, err := openReplica(ctx, o, log, reg)
	if err != nil {
		return err
	}
	st, keys := rep.st, rep.keys
	defer st.Close()
	au, err := auth.New(ctx, auth.Options{Keys: keys, Store: st, Issuer: o.PublicURL, Logger: log.Named("auth"), Registerer: reg,
		Bus: rep.bus, FallbackInterval: rep.fallback})
	if err != nil {
		return err
	}
	if err := ensureAdminToken(ctx, o.DataDir, au, log); err != nil {
		return err
	}
	ro, err := rollout.New(rollout.Options{Store: rep.rolloutStore(), Logger: log.Named("rollout"), Leader: rep.leader()})
	if err != nil {
		return err
	}
	rel, err := release.New(release.Options{Store: rep.rolloutStore(), DataDir: o.DataDir, FleetURL: o.PublicURL, Logger: log.Named("release"), Leader: rep.leader()})
	if err != nil && !errors.Is(err, release.ErrUnsupported) {
		return err
	}
	op, err := opamp.New(opamp.Options{
		Store: st, Auth: au, Logger: log.Named("opamp"), Registerer: reg,
		CredentialTTL: o.CredentialTTL, MaxConnections: o.MaxConnections, RotationRate: o.RotationRate,
		FailRotation: failRotationHook(), SoleWriter: rep.lease == nil, ConfigJSON: ro.ConfigJSON,
		Callbacks: opamp.Callbacks{
			OnAgentStatus:     func(a *store.Agent) { ro.OnAgentStatus(a); rel.OnAgentStatus(a); rep.changed(a.ProjectID) },
			OnPackageStatuses: rel.OnPackageStatuses,
		},
	})
	if err != nil {
		return err
	}
	op.UseBus(rep.bus) // on-demand rotations reach agents on other replicas
	// The agents' recorded credentials and records, listed while the
	// fleet serves, with the agents' handshakes waiting for the listing:
	// a reconnect storm is then checked without a signature verification
	// per agent, and its connections wait in the process rather than
	// overflow the kernel's listen queue. (A listing that did not hold
	// the handshakes finished seconds into a storm of 19,000 agents, and
	// 78–100% of them were verified by signature.)
	lctx, cancel := context.WithTimeout(ctx, loadRecordedFor)
	op.LoadRecordedWhileServing(lctx, func(err error) {
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn("agent credentials will be verified by signature", zap.Error(err))
		}
	})
	if rep.lease == nil {
		go markGone(ctx, op, log)
	}
	api := console.New(console.Options{Store: st, Auth: au, Fleet: op, Logger: log.Named("api"), FleetURL: o.PublicURL, Bus: rep.bus})
	popts := &profiles.Options{
		Logger: log.Named("profiles"), Registerer: reg, Retention: o.ProfileRetention, MaxBytes: o.ProfileMaxBytes,
	}
	if o.ProfileS3.Endpoint != "" || o.ProfileS3.Bucket != "" {
		bl, err := profiles.NewS3Blobs(ctx, o.ProfileS3)
		if err != nil {
			return fmt.Errorf("profile blobs (--profiles-s3-*): %w", err)
		}
		popts.Blobs = bl
		if o.Store == "postgres" {
			// Replicas share the bucket (same prefix) and the index.
			popts.IndexDSN = o.PostgresDSN
		}
		log.Info("profile blobs in object storage", zap.Stringer("bucket", bl), zap.String("endpoint", o.ProfileS3.Endpoint),
			zap.Bool("shared_index", popts.IndexDSN != ""))
	}
	ps, err := profiles.Open(ctx, filepath.Join(o.DataDir, "profiles"), popts)
	if err != nil {
		return err
	}
	defer ps.Close()
	ing, err := ingest.New(ingest.Options{Store: ps, Auth: au, Logger: log.Named("ingest"), Registerer: reg})
	if err != nil {
		return err
	}

	var shuttingDown atomic.Bool
	mux := http.NewServeMux()
	mux.Handle(opamp.Path, op.Handler())
	api.Register(mux)
	api.RegisterUI(mux) // the web console at /
	api.RegisterRollouts(mux, ro)
	api.RegisterReleases(mux, rel)
	ing.Register(mux)
	RegisterInstall(mux, InstallOptions{FleetURL: o.PublicURL, AgentBinary: o.AgentBinary, Logger: log.Named("install")})
	profiles.NewQueryAPI(ps).Register(mux, func(r *http.Request, projectID string) error {
		return api.AuthorizeProject(r, projectID)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		pctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if shuttingDown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := st.DB().PingContext(pctx); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(keys.JWKS())
	})
	if os.Getenv("FLEETPROF_DEBUG_PPROF") == "1" {
		// Profiling of the fleet itself, for benchmarks; off by default
		// because it is not authenticated.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		log.Warn("FLEETPROF_DEBUG_PPROF=1: /debug/pprof/ is served without authentication")
	}
	mux.HandleFunc("GET /api/v1/version", func(w http.ResponseWriter, r *http.Request) {
		console.WriteJSON(w, http.StatusOK, console.Envelope{Data: map[string]string{"version": version.Version}})
	})

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(o.TLSCertFile == "")
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       op.ConnContext,
		Protocols:         &protocols,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	if o.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("load TLS key pair: %w", err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return au.Run(gctx) })
	g.Go(func() error { return ro.Run(gctx, op) })
	g.Go(func() error { return rel.Run(gctx, op) })
	g.Go(func() error { return rep.run(gctx, op, ro, rel) })
	g.Go(func() error { return op.Run(gctx) })
	g.Go(func() error { return ps.Run(gctx) })
	g.Go(func() error {
		var err error
		if o.TLSCertFile != "" {
			log.Info("fleet serving HTTPS", zap.String("address", ln.Addr().String()), zap.String("url", o.PublicURL))
			err = hs.ServeTLS(ln, "", "")
		} else {
			log.Warn("fleet serving plaintext HTTP (no --tls-cert-file): fine on loopback, use TLS elsewhere", zap.String("address", ln.Addr().String()), zap.String("url", o.PublicURL))
			// The agents' WebSocket handshakes skip net/http.
			err = hs.Serve(op.Listen(ln))
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		shuttingDown.Store(true)
		op.Shutdown()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	if o.Ready != nil {
		o.Ready(ln.Addr())
	}
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		return err
	}
	log.Info("fleet stopped")
	return nil
}

// ensureAdminToken writes DIR/admin-token (0600) on first start.
func ensureAdminToken(ctx context.Context, dir string, au *auth.Authenticator, log *zap.Logger) error {
	path := filepath.Join(dir, "admin-token")
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat admin token: %w", err)
	}
	raw, _, err := au.Issue(ctx, auth.IssueRequest{Kind: token.KindAdmin, Name: "initial admin", CreatedBy: "fleet"})
	if err != nil {
		return fmt.Errorf("issue admin token: %w", err)
	}
	if err := os.WriteFile(path, []byte(raw+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	log.Info("wrote the initial admin token", zap.String("path", path))
	return nil
}

// failRotationHook is a test hook: FLEETPROF_TEST_FAIL_ROTATION=1 makes
// every credential offered for rotation unusable (revoked at once).
func failRotationHook() func(string) bool {
	if v := os.Getenv("FLEETPROF_TEST_FAIL_ROTATION"); v == "" {
		return nil
	} else {
		ids := strings.Split(v, ",")
		return func(agentID string) bool {
			for _, id := range ids {
				if id == "all" || id == agentID {
					return true
				}
			}
			return false
		}
	}
}

var _ store.Store = (*sqlite.Store)(nil)

// markDisconnectedAfter is how long after its start a SQLite fleet marks
// the agents that did not reconnect disconnected.
const markDisconnectedAfter = 10 * time.Second

// markGone marks the agents that were connected before this process
// started and did not come back disconnected, markDisconnectedAfter the
// start (a fleet alone on its store; opamp.Server.MarkGone). No agent is
// connected to a process that just started, but the records of those
// connected before a crash say they are. Marking them all at the start
// cost 0.6 s at 19,000 agents, before serving or in the middle of the
// reconnect storm, and made every returning agent's first report a write
// (connected again); once the storm is over, only the agents that did
// not return are written.
func markGone(ctx context.Context, op *opamp.Server, log *zap.Logger) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(markDisconnectedAfter):
	}
	t0 := time.Now()
	n, err := op.MarkGone(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Error("mark agents that did not come back disconnected", zap.Error(err))
		}
		return
	}
	log.Info("agents that did not come back marked disconnected", zap.Int("agents", n), zap.Duration("took", time.Since(t0)))
}
