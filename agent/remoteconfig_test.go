package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/internal/config"
)

func testAgent(t *testing.T, dir string, kubernetes bool) *Agent {
	t.Helper()
	return &Agent{
		o:   Options{StateDir: dir, FrequencyHz: 19, Duration: 10 * time.Second, Kubernetes: kubernetes, RemoteStoreAddress: "127.0.0.1:7070"},
		log: zap.NewNop(), errs: map[string]string{},
	}
}

func push(t *testing.T, body string, hash []byte) *protobufs.AgentRemoteConfig {
	t.Helper()
	return pushAs(t, config.ContentTypeYAML, body, hash)
}

func pushAs(t *testing.T, contentType, body string, hash []byte) *protobufs.AgentRemoteConfig {
	t.Helper()
	if hash == nil && strings.TrimSpace(body) != "" {
		c, err := config.ParseAs(contentType, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		hash = c.Hash()
	}
	return &protobufs.AgentRemoteConfig{
		Config:     &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{"": {Body: []byte(body), ContentType: contentType}}},
		ConfigHash: hash,
	}
}

func TestRemoteConfigApplyFailKeepReset(t *testing.T) {
	t.Setenv(failConfigEnv, "fail-me")
	dir := t.TempDir()
	a := testAgent(t, dir, false)
	if !strings.Contains(string(a.effectiveConfig()), `"frequency_hz":19`) {
		t.Fatalf("initial effective config is not the flags' config:\n%s", a.effectiveConfig())
	}

	eff, err := a.onRemoteConfig(t.Context(), push(t, "sampling: {frequency_hz: 49}\n", nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(eff), `"frequency_hz":49`) {
		t.Fatalf("effective config after apply:\n%s", eff)
	}
	st, err := os.Stat(filepath.Join(dir, remoteConfigFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("last good config not persisted 0600: %v %v", err, st)
	}

	for _, tc := range []struct {
		name, body string
		hash       []byte
		want       string
	}{
		{"injected", "sampling: {frequency_hz: 50}\nexternal_labels: {x: fail-me}\n", nil, "injected failure"},
		{"kubernetes targets without --kubernetes", "targets: {kubernetes: {namespaces: [shop]}}\n", nil, "targets.kubernetes: this agent does not run Kubernetes discovery"},
		{"invalid", "sampling: {frequency_hz: 0}\n", []byte{1}, "sampling.frequency_hz"},
		{"hash mismatch", "sampling: {frequency_hz: 51}\n", []byte{1, 2, 3}, "hash mismatch"},
	} {
		_, err := a.onRemoteConfig(t.Context(), push(t, tc.body, tc.hash))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming %q", tc.name, err, tc.want)
		}
		if got := string(a.effectiveConfig()); !strings.Contains(got, `"frequency_hz":49`) {
			t.Errorf("%s: the last good config was not kept:\n%s", tc.name, got)
		}
	}

	// A restart (fleet unreachable) starts with the last good config.
	b := testAgent(t, dir, false)
	b.loadLastGoodConfig()
	if got := string(b.effectiveConfig()); !strings.Contains(got, `"frequency_hz":49`) {
		t.Fatalf("restarted agent does not start with the last good config:\n%s", got)
	}

	// An empty config returns to the flags and forgets the file.
	if _, err := b.onRemoteConfig(t.Context(), push(t, "", []byte{9})); err != nil {
		t.Fatal(err)
	}
	if got := string(b.effectiveConfig()); !strings.Contains(got, `"frequency_hz":19`) {
		t.Errorf("reset did not return to the flags' config:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, remoteConfigFile)); !os.IsNotExist(err) {
		t.Errorf("reset left the last good config file: %v", err)
	}
}

// TestRemoteConfigJSON: the fleet pushes the canonical JSON; the agent
// reads it by its content type, and reports its effective config as JSON
// that reads back to the config it applied.
func TestRemoteConfigJSON(t *testing.T) {
	a := testAgent(t, t.TempDir(), false)
	want, err := config.Parse([]byte("sampling: {frequency_hz: 61, duration: 7s}\nexternal_labels: {team: \"a\\u0080b\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	eff, err := a.onRemoteConfig(t.Context(), pushAs(t, config.ContentTypeJSON, string(want.JSON()), nil))
	if err != nil {
		t.Fatal(err)
	}
	got, err := config.ParseJSON(eff)
	if err != nil {
		t.Fatalf("effective config %s: %v", eff, err)
	}
	if got.HashString() != want.HashString() || a.currentConfig().HashString() != want.HashString() {
		t.Errorf("applied %s, effective %s; want the pushed config %s", a.currentConfig().HashString(), got.HashString(), want.HashString())
	}
	// A body that is not what its content type says fails, and the
	// config in effect stays.
	if _, err := a.onRemoteConfig(t.Context(), pushAs(t, config.ContentTypeJSON, "sampling: {frequency_hz: 62}\n", []byte{1})); err == nil || !errors.Is(err, config.ErrSyntax) {
		t.Errorf("YAML sent as JSON: err = %v, want a syntax error", err)
	}
	if a.currentConfig().Sampling.FrequencyHz != 61 {
		t.Errorf("a failed push changed the config in effect: %+v", a.currentConfig().Sampling)
	}
}

func TestKubernetesTargetsWithKubernetes(t *testing.T) {
	a := testAgent(t, t.TempDir(), true)
	if _, err := a.onRemoteConfig(t.Context(), push(t, "targets: {kubernetes: {namespaces: [shop]}}\n", nil)); err != nil {
		t.Fatalf("kubernetes agent refused kubernetes targets: %v", err)
	}
}
