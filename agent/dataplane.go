package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/fleetprof/fleetprof/agent/discovery"
	kubedisc "github.com/fleetprof/fleetprof/agent/discovery/kubernetes"
	sddisc "github.com/fleetprof/fleetprof/agent/discovery/systemd"
	"github.com/fleetprof/fleetprof/agent/profile"
	"github.com/fleetprof/fleetprof/agent/sampler"
	"github.com/fleetprof/fleetprof/agent/upload"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/describe"
)

// dataPlane is the sampler → index → builder → uploader pipeline.
type dataPlane struct {
	mu    sync.Mutex
	samp  *sampler.Sampler
	build *profile.Builder
	index *discovery.Index
	disc  *discovery.Manager
	up    *upload.Uploader
	upTo  [3]string // address, protocol, insecure of the uploader
}

// initialConfig is the config the agent starts with: the last good one
// from the fleet if any, otherwise the one its flags describe.
func (a *Agent) flagConfig() *config.Config {
	c := config.Default()
	if a.o.FrequencyHz > 0 {
		c.Sampling.FrequencyHz = a.o.FrequencyHz
	}
	if a.o.Duration > 0 {
		c.Sampling.Duration = config.Duration(a.o.Duration)
	}
	return c
}

// uploadTarget resolves where profiles go under cfg.
func (a *Agent) uploadTarget(cfg *config.Config) (addr, proto string, insecure bool, err error) {
	proto = cfg.Upload.Protocol
	if cfg.Upload.Address != "" {
		return cfg.Upload.Address, proto, cfg.Upload.Insecure || a.o.Insecure, nil
	}
	if a.o.FleetAddress != "" {
		u, err := url.Parse(a.o.FleetAddress)
		if err != nil {
			return "", "", false, fmt.Errorf("fleet address: %w", err)
		}
		return u.Host, "parca", u.Scheme == "http", nil
	}
	if a.o.RemoteStoreAddress == "" {
		return "", "", false, errors.New("no upload target: set --remote-store-address or upload.address")
	}
	return a.o.RemoteStoreAddress, proto, a.o.Insecure, nil
}

func (a *Agent) token() string {
	if a.ctl != nil {
		return a.ctl.Credential()
	}
	return a.o.BearerToken
}

// static is the selector the flags give (--systemd-units); it is merged
// with every config's selectors.
func (a *Agent) static() discovery.Selector {
	return discovery.Selector{Units: a.o.SystemdUnits}
}

// runDataPlane samples, builds and uploads profiles until ctx ends. If
// the kernel or privileges refuse the sampler, it says why (health,
// /readyz, log) and the agent keeps its control connection.
func (a *Agent) runDataPlane(ctx context.Context) error {
	cfg := a.currentConfig()
	settings, err := discovery.SettingsFromConfig(cfg, a.static())
	if err != nil {
		return fmt.Errorf("targets: %w", err)
	}
	dp := &dataPlane{}
	dp.index = discovery.NewIndex(discovery.IndexOptions{Node: a.o.Node, Settings: settings})
	addr, proto, insecure, err := a.uploadTarget(cfg)
	if err != nil {
		return err
	}
	spool := ""
	if a.o.StateDir != "" {
		spool = filepath.Join(a.o.StateDir, "spool")
	}
	dp.up, err = upload.New(upload.Options{
		Address: addr, Protocol: proto, Insecure: insecure, TLSCAFile: a.o.TLSCAFile, Token: a.token,
		SpoolDir: spool, Logger: a.log.Named("upload"), Registerer: a.reg,
	})
	if err != nil {
		return fmt.Errorf("uploader: %w", err)
	}
	dp.upTo = [3]string{addr, proto, fmt.Sprint(insecure)}
	dp.build, err = profile.NewBuilder(profile.BuilderOptions{Node: a.o.Node, Logger: a.log.Named("profile"), Registerer: a.reg})
	if err != nil {
		return fmt.Errorf("profile builder: %w", err)
	}
	defer dp.build.Close()

	discs := map[string]discovery.Discoverer{}
	if a.o.Kubernetes {
		kd, err := a.kubeDiscoverer()
		if err != nil {
			a.log.Warn("Kubernetes discovery is off: " + err.Error())
		} else {
			discs[discovery.SourceKubernetes] = kd
		}
	}
	if len(a.o.SystemdUnits) > 0 || len(cfg.Targets.Systemd.Units) > 0 || a.o.Platform == describe.PlatformSystemd {
		discs[discovery.SourceSystemd] = sddisc.New(sddisc.Options{Units: a.o.SystemdUnits, Node: a.o.Node, Logger: a.log.Named("systemd")})
	}
	dp.disc, err = discovery.NewManager(discovery.ManagerOptions{Index: dp.index, Discoverers: discs, Static: a.static(), Logger: a.log.Named("discovery")})
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	if err := dp.disc.ApplyConfig(cfg); err != nil {
		return fmt.Errorf("targets: %w", err)
	}
	a.mu.Lock()
	a.dp = dp
	a.mu.Unlock()

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dp.up.Run(ctx) })
	g.Go(func() error { return dp.disc.Run(ctx) })

	samp, err := sampler.New(sampler.Options{
		FrequencyHz: cfg.Sampling.FrequencyHz, Window: time.Duration(cfg.Sampling.Duration),
		Logger: a.log.Named("sampler"), Registerer: a.reg, OnNewPID: dp.build.Observe,
	})
	if err != nil {
		a.log.Error("the eBPF sampler cannot run; the agent keeps its fleet connection but profiles nothing", zap.Error(err))
		a.setError("sampler", err.Error())
		return g.Wait()
	}
	dp.mu.Lock()
	dp.samp = samp
	dp.mu.Unlock()
	a.setError("sampler", "")
	a.log.Info("sampling", zap.Int("hz", cfg.Sampling.FrequencyHz), zap.String("window", time.Duration(cfg.Sampling.Duration).String()))
	g.Go(func() error {
		defer samp.Close()
		return samp.Run(ctx, func(w *sampler.Window) {
			ps, err := dp.build.Build(w, dp.index.Lookup)
			if err != nil {
				a.log.Warn("build profiles", zap.Error(err))
				return
			}
			if len(ps) == 0 {
				return
			}
			batch := make([]upload.Profile, len(ps))
			for i, p := range ps {
				batch[i] = upload.Profile{Labels: p.Labels, Start: p.Start, Duration: p.Duration, Data: p.Data}
			}
			dp.up.Enqueue(batch)
		})
	})
	return g.Wait()
}

func (a *Agent) kubeDiscoverer() (*kubedisc.Discoverer, error) {
	rc, err := kubedisc.RESTConfig(a.o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return kubedisc.New(kubedisc.Options{Client: cs, Config: rc, Node: a.o.Node, Logger: a.log.Named("kubernetes")})
}

func (a *Agent) currentConfig() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg == nil {
		a.cfg = a.flagConfig()
	}
	return a.cfg
}

// applyToDataPlane applies a validated config to sampler, discovery and
// upload in turn; on failure it restores the previous config and returns
// the joined reasons.
func (a *Agent) applyToDataPlane(cfg *config.Config) error {
	if cfg.Targets.Kubernetes.PodSelector != "" || len(cfg.Targets.Kubernetes.Namespaces) > 0 {
		if !a.o.Kubernetes {
			return errors.New("targets.kubernetes: this agent does not run Kubernetes discovery (start it with --kubernetes)")
		}
	}
	if _, err := discovery.SettingsFromConfig(cfg, a.static()); err != nil {
		return err
	}
	addr, proto, insecure, err := a.uploadTarget(cfg)
	if err != nil {
		return err
	}
	a.mu.Lock()
	prev := a.cfg
	dp := a.dp
	a.mu.Unlock()
	if prev == nil {
		prev = a.flagConfig()
	}
	if dp != nil {
		var errs []error
		dp.mu.Lock()
		samp := dp.samp
		dp.mu.Unlock()
		if samp != nil {
			if err := samp.SetRate(cfg.Sampling.FrequencyHz, time.Duration(cfg.Sampling.Duration)); err != nil {
				errs = append(errs, fmt.Errorf("sampling: %w", err))
			}
		}
		if len(errs) == 0 {
			if err := dp.disc.ApplyConfig(cfg); err != nil {
				errs = append(errs, fmt.Errorf("targets: %w", err))
			}
		}
		if len(errs) == 0 {
			to := [3]string{addr, proto, fmt.Sprint(insecure)}
			if to != dp.upTo {
				if err := dp.up.ApplyConfig(addr, proto, insecure); err != nil {
					errs = append(errs, fmt.Errorf("upload: %w", err))
				} else {
					dp.upTo = to
				}
			}
		}
		if len(errs) > 0 {
			// Put the previous config back everywhere.
			if samp != nil {
				_ = samp.SetRate(prev.Sampling.FrequencyHz, time.Duration(prev.Sampling.Duration))
			}
			_ = dp.disc.ApplyConfig(prev)
			return errors.Join(errs...)
		}
	}
	a.mu.Lock()
	a.cfg = cfg
	a.mu.Unlock()
	return nil
}
