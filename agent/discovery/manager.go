package discovery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/relabel"
)

// UnitSetter is a discoverer whose unit globs change live (the systemd one).
type UnitSetter interface {
	SetUnits(globs []string)
}

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// Index receives the targets. Required.
	Index *Index
	// Discoverers by source (SourceKubernetes, SourceSystemd); a missing
	// one is off. A discoverer that is a UnitSetter gets the unit globs.
	Discoverers map[string]Discoverer
	// Static are selectors from flags (--systemd-units), merged with those
	// of every applied config.
	Static Selector
	// SweepInterval is how often the Index forgets exited pids; 0 means 10s.
	SweepInterval time.Duration
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
}

// Manager runs the enabled discoverers, feeds the Index and applies remote
// config (selectors, relabel rules, external labels) live.
type Manager struct {
	opts ManagerOptions
	mu   sync.Mutex
}

// NewManager returns a Manager; it applies opts.Static at once.
func NewManager(opts ManagerOptions) (*Manager, error) {
	if opts.Index == nil {
		return nil, errors.New("discovery manager: nil index")
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	m := &Manager{opts: opts}
	sel, err := opts.Static.Compile()
	if err != nil {
		return nil, err
	}
	m.apply(Settings{Selection: sel})
	return m, nil
}

// SettingsFromConfig compiles the target selectors (merged with static),
// relabel rules and external labels of a remote config. Errors name the
// config field.
func SettingsFromConfig(c *config.Config, static Selector) (Settings, error) {
	s := Selector{
		Namespaces:  slices.Concat(static.Namespaces, c.Targets.Kubernetes.Namespaces),
		PodSelector: c.Targets.Kubernetes.PodSelector,
		Units:       slices.Concat(static.Units, c.Targets.Systemd.Units),
		Comm:        c.Targets.Processes.Comm,
		Exe:         c.Targets.Processes.Exe,
	}
	if s.PodSelector == "" {
		s.PodSelector = static.PodSelector
	}
	if s.Comm == "" {
		s.Comm = static.Comm
	}
	if s.Exe == "" {
		s.Exe = static.Exe
	}
	sel, err := s.Compile()
	if err != nil {
		return Settings{}, err
	}
	out := Settings{Selection: sel, ExternalLabels: c.ExternalLabels}
	if len(c.RelabelConfigs) > 0 {
		rules, err := relabel.Compile(c.RelabelConfigs)
		if err != nil {
			return Settings{}, fmt.Errorf("relabel_configs: %w", err)
		}
		out.Relabel = rules
	}
	return out, nil
}

// ApplyConfig switches selectors, relabel rules and external labels live.
// On error nothing changes.
func (m *Manager) ApplyConfig(c *config.Config) error {
	s, err := SettingsFromConfig(c, m.opts.Static)
	if err != nil {
		return err
	}
	m.apply(s)
	return nil
}

// ApplyConfig switches the Index to a remote config's selectors, relabel
// rules and external labels (without the Manager's static selectors). On
// error nothing changes.
func (ix *Index) ApplyConfig(c *config.Config) error {
	s, err := SettingsFromConfig(c, Selector{})
	if err != nil {
		return err
	}
	ix.Apply(s)
	return nil
}

func (m *Manager) apply(s Settings) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opts.Index.Apply(s)
	for _, d := range m.opts.Discoverers {
		if us, ok := d.(UnitSetter); ok {
			us.SetUnits(s.Selection.Units())
		}
	}
}

// Run runs the discoverers until ctx ends and returns nil then; a
// discoverer's error is logged and its targets are dropped.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for src, d := range m.opts.Discoverers {
		up := make(chan []Target)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := d.Run(ctx, up); err != nil {
				m.opts.Logger.Error("discovery stopped", zap.String("source", src), zap.Error(err))
				m.opts.Index.Update(src, nil)
			}
		}()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case ts := <-up:
					m.opts.Index.Update(src, ts)
				}
			}
		}()
	}
	tick := time.NewTicker(m.opts.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			m.opts.Index.Sweep()
		}
	}
}
