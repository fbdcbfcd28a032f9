package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/agent/upgrade"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/version"
)

// Options is the agent's command line, resolved.
type Options struct {
	Node        string
	HTTPAddress string // health and metrics; "" disables
	Kubernetes  bool
	Kubeconfig  string
	Insecure    bool
	TLSCAFile   string

	// Fleet mode.
	FleetAddress   string
	BootstrapToken string
	StateDir       string

	// Standalone mode (no fleet): upload straight to a backend.
	RemoteStoreAddress string
	BearerToken        string

	SystemdUnits []string
	FrequencyHz  int
	Duration     time.Duration
	Labels       map[string]string // custom agent labels
	Cluster      string
	Platform     string // "" detects: kubernetes, systemd or host

	Logger *zap.Logger
}

// Agent is a running agent.
type Agent struct {
	o    Options
	log  *zap.Logger
	reg  *prometheus.Registry
	ctl  *control.Client
	mu   sync.Mutex
	errs map[string]string // component → why it is not working
	cfg  *config.Config    // config in effect
	dp   *dataPlane
	upg  *upgrade.Manager // self-upgrades (fleet mode)
}

// New validates options and builds the agent.
func New(o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.FleetAddress == "" && o.RemoteStoreAddress == "" {
		return nil, errors.New("set --fleet-address (managed) or --remote-store-address (standalone)")
	}
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
	if o.Platform == "" {
		o.Platform = DetectPlatform(o.Kubernetes)
	}
	a := &Agent{o: o, log: o.Logger, reg: prometheus.NewRegistry(), errs: map[string]string{}}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if o.FleetAddress != "" {
		tlsCfg, err := a.tlsConfig()
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(o.FleetAddress, "http://") && !o.Insecure {
			return nil, fmt.Errorf("fleet address %s is plaintext: use https:// or pass --insecure", o.FleetAddress)
		}
		if o.StateDir == "" {
			return nil, errors.New("--state-dir is required with --fleet-address (the credential is kept there)")
		}
		a.loadLastGoodConfig()
		if a.upg, err = a.newUpgrader(tlsCfg); err != nil {
			return nil, err
		}
		ctl, err := control.New(control.Options{
			FleetURL: o.FleetAddress, BootstrapToken: o.BootstrapToken, StateDir: o.StateDir, TLSConfig: tlsCfg,
			Description: a.describe(), Logger: o.Logger.Named("control"),
			Callbacks: a.withUpgrades(a.controlCallbacks()), Packages: a.upg.StateProvider(),
		})
		if err != nil {
			return nil, err
		}
		a.ctl = ctl
	}
	return a, nil
}

func (a *Agent) tlsConfig() (*tls.Config, error) {
	if a.o.TLSCAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(a.o.TLSCAFile)
	if err != nil {
		return nil, fmt.Errorf("read --tls-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca-file %s holds no PEM certificate", a.o.TLSCAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// DetectPlatform says how this agent runs: kubernetes (in a pod or with
// --kubernetes), systemd (started by systemd) or host.
func DetectPlatform(kubernetes bool) string {
	if kubernetes || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return describe.PlatformKubernetes
	}
	if os.Getenv("INVOCATION_ID") != "" || os.Getenv("FLEETPROF_PLATFORM") == describe.PlatformSystemd {
		return describe.PlatformSystemd
	}
	return describe.PlatformHost
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func (a *Agent) describe() describe.Agent {
	host, _ := os.Hostname()
	return describe.Agent{
		Version: version.Version, Hostname: host, OS: runtime.GOOS, Kernel: kernelRelease(), Arch: runtime.GOARCH,
		Platform: a.o.Platform, Node: a.o.Node, Cluster: a.o.Cluster, Image: os.Getenv("FLEETPROF_IMAGE"), Labels: a.o.Labels,
	}
}

// setError records why a component is not working ("" clears it) and
// reports the agent's health to the fleet.
func (a *Agent) setError(component, msg string) {
	a.mu.Lock()
	if msg == "" {
		delete(a.errs, component)
	} else {
		a.errs[component] = msg
	}
	var parts []string
	for k, v := range a.errs {
		parts = append(parts, k+": "+v)
	}
	a.mu.Unlock()
	if a.ctl != nil {
		if len(parts) == 0 {
			a.ctl.SetHealth(true, "running", "")
		} else {
			a.ctl.SetHealth(false, "degraded", strings.Join(parts, "; "))
		}
	}
}

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if a.o.HTTPAddress != "" {
		ln, err := net.Listen("tcp", a.o.HTTPAddress)
		if err != nil {
			return fmt.Errorf("listen on --http-address %s: %w", a.o.HTTPAddress, err)
		}
		hs := &http.Server{Handler: a.mux(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
	}
	if a.ctl != nil {
		g.Go(func() error { return a.ctl.Run(ctx) })
		g.Go(func() error { return a.upg.Run(ctx) })
	}
	g.Go(func() error { return a.runDataPlane(ctx) })
	return g.Wait()
}

func (a *Agent) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := a.status()
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}

// Status is what /readyz reports.
type Status struct {
	Ready      bool              `json:"ready"`
	AgentID    string            `json:"agentId,omitempty"`
	Control    *control.Status   `json:"control,omitempty"`
	Components map[string]string `json:"problems,omitempty"`
}

func (a *Agent) status() Status {
	st := Status{Ready: true}
	if a.ctl != nil {
		cs := a.ctl.Status()
		st.Control = &cs
		st.AgentID = a.ctl.InstanceID()
		if cs.NeedsEnroll || !cs.Enrolled {
			st.Ready = false
		}
	}
	a.mu.Lock()
	if len(a.errs) > 0 {
		st.Components = map[string]string{}
		for k, v := range a.errs {
			st.Components[k] = v
		}
		st.Ready = false
	}
	a.mu.Unlock()
	return st
}
