package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/internal/config"
)

// remoteConfigFile holds the last remote config that applied, in the
// state dir (0600), so the agent starts with it when the fleet is away.
const remoteConfigFile = "remote-config.yaml"

// failConfigEnv is a test hook: a pushed config whose YAML contains its
// value fails to apply.
const failConfigEnv = "FLEETPROF_TEST_FAIL_CONFIG"

// controlCallbacks connect remote config to the control client.
func (a *Agent) controlCallbacks() control.Callbacks {
	return control.Callbacks{OnRemoteConfig: a.onRemoteConfig, EffectiveConfig: a.effectiveConfig, EffectiveConfigType: config.ContentTypeJSON}
}

// loadLastGoodConfig makes the last good remote config (if any) the
// config the agent starts with. A file that no longer parses is logged
// and ignored: the flags' config is used instead.
func (a *Agent) loadLastGoodConfig() {
	if a.o.StateDir == "" {
		return
	}
	path := filepath.Join(a.o.StateDir, remoteConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		a.log.Warn("read last good remote config; starting with the command-line config", zap.Error(err))
		return
	}
	cfg, err := config.Parse(b)
	if err != nil {
		a.log.Warn("last good remote config does not parse; starting with the command-line config", zap.String("path", path), zap.Error(err))
		return
	}
	a.mu.Lock()
	a.cfg = cfg
	a.mu.Unlock()
	a.log.Info("starting with the last good remote config", zap.String("hash", cfg.HashString()))
}

// onRemoteConfig applies a config pushed by the fleet, live. An empty
// body returns the agent to its command-line config. On any error the
// previous config stays in effect (applyToDataPlane restores it).
func (a *Agent) onRemoteConfig(_ context.Context, rc *protobufs.AgentRemoteConfig) ([]byte, error) {
	var body []byte
	contentType := config.ContentTypeYAML
	if m := rc.GetConfig().GetConfigMap(); m != nil {
		if f := m[""]; f != nil {
			body, contentType = f.Body, f.ContentType
		}
	}
	if v := os.Getenv(failConfigEnv); v != "" && bytes.Contains(body, []byte(v)) {
		return nil, fmt.Errorf("injected failure: the config contains %q (%s)", v, failConfigEnv)
	}
	var cfg *config.Config
	if len(bytes.TrimSpace(body)) == 0 {
		cfg = a.flagConfig()
	} else {
		var err error
		// The fleet pushes JSON; a YAML body (another server) parses too.
		if cfg, err = config.ParseAs(contentType, body); err != nil {
			return nil, err
		}
		if h := rc.GetConfigHash(); len(h) > 0 && !bytes.Equal(h, cfg.Hash()) {
			return nil, fmt.Errorf("config hash mismatch: the fleet sent %x, the document hashes to %s", h, cfg.HashString())
		}
	}
	if err := a.applyToDataPlane(cfg); err != nil {
		return nil, err
	}
	if err := a.saveLastGoodConfig(cfg, len(bytes.TrimSpace(body)) == 0); err != nil {
		// Applied, but a restart without the fleet would not have it.
		a.log.Warn("persist remote config", zap.Error(err))
	}
	a.log.Info("remote config applied", zap.String("hash", cfg.HashString()), zap.Int("frequency_hz", cfg.Sampling.FrequencyHz))
	return a.effectiveConfig(), nil
}

// saveLastGoodConfig writes cfg (canonical YAML) to the state dir, or
// removes the file when reset is true.
func (a *Agent) saveLastGoodConfig(cfg *config.Config, reset bool) error {
	if a.o.StateDir == "" {
		return nil
	}
	path := filepath.Join(a.o.StateDir, remoteConfigFile)
	if reset {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	b, err := cfg.Marshal()
	if err != nil {
		return err
	}
	// A temporary file, synced and renamed over the old one: a crash
	// leaves the old config or the new one, never a torn one.
	if err := renameio.WriteFile(path, b, 0o600, renameio.IgnoreUmask()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// effectiveConfig is the canonical JSON of the config in effect (the
// fleet shows it as YAML); a tenth of the cost of encoding YAML.
func (a *Agent) effectiveConfig() []byte { return a.currentConfig().JSON() }
