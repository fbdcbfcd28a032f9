package opamp

import (
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/describe"
)

// TestApplyDescriptionCustomLabels: labels set in the console stay in
// Labels when the agent describes itself again and win over the agent's
// own labels and its token's, never over the well-known labels.
func TestApplyDescriptionCustomLabels(t *testing.T) {
	a := &store.Agent{
		ID:           "a1",
		Labels:       map[string]string{"team": "perf", "tier": "gold", "zone": "z1"},
		Description:  map[string]string{"fleetprof.token_label.team": "perf"},
		CustomLabels: map[string]string{"team": "web", "tier": "gold", "rack": "r7", "platform": "forged"},
	}
	msg := &protobufs.AgentToServer{AgentDescription: describe.Encode(describe.Agent{
		InstanceID: "a1", Version: "v1", Hostname: "h1", Platform: describe.PlatformSystemd,
		Labels: map[string]string{"rack": "r1", "env": "prod"},
	})}
	applyDescription(a, msg, time.Unix(1, 0), nil)
	want := map[string]string{
		"platform": "systemd", "version": "v1", "hostname": "h1", // well-known win
		"team": "web", "rack": "r7", "tier": "gold", // custom win over token and agent labels
		"env": "prod", "zone": "z1",
	}
	if diff := cmp.Diff(want, a.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
}

// TestApplyDescriptionKeepsTokenLabels: a label the agent got from its
// bootstrap token wins over the agent's own label of that name, in every
// description the agent sends, not only the first (the note of which
// labels came from the token used to be replaced with the description).
func TestApplyDescriptionKeepsTokenLabels(t *testing.T) {
	a := &store.Agent{
		ID:          "a1",
		Labels:      map[string]string{"team": "perf"},
		Description: map[string]string{"fleetprof.token_label.team": "perf"},
	}
	msg := &protobufs.AgentToServer{AgentDescription: describe.Encode(describe.Agent{
		InstanceID: "a1", Hostname: "h1", Platform: describe.PlatformSystemd, Labels: map[string]string{"team": "mine"},
	})}
	for i := range 2 {
		applyDescription(a, msg, time.Unix(int64(i), 0), nil)
		if a.Labels["team"] != "perf" || a.Description["fleetprof.token_label.team"] != "perf" || a.Description["host.name"] != "h1" {
			t.Fatalf("description %d: labels %v, description %v; want the token's team, its note kept", i+1, a.Labels, a.Description)
		}
	}
}

// Reports of the same effective config leave the agents' records sharing
// one copy of it; a report of the config already recorded keeps it.
func TestEffectiveConfigShared(t *testing.T) {
	eff := func() *protobufs.AgentToServer {
		body := []byte(`{"sampling":{"frequency_hz":49,"duration":"10s"},"external_labels":{"pad":"` + strings.Repeat("x", 900) + `"}}`)
		return &protobufs.AgentToServer{EffectiveConfig: &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{
			ConfigMap: map[string]*protobufs.AgentConfigFile{"": {Body: body, ContentType: "application/json"}}}}}
	}
	a, b := &store.Agent{ID: "a"}, &store.Agent{ID: "b"}
	applyDescription(a, eff(), time.Unix(1, 0), nil)
	applyDescription(b, eff(), time.Unix(1, 0), nil)
	if !strings.HasPrefix(a.EffectiveConfig, `{"sampling"`) || unsafe.StringData(a.EffectiveConfig) != unsafe.StringData(b.EffectiveConfig) {
		t.Fatalf("two agents of one effective config hold two copies")
	}
	before := unsafe.StringData(a.EffectiveConfig)
	applyDescription(a, eff(), time.Unix(2, 0), nil)
	if unsafe.StringData(a.EffectiveConfig) != before {
		t.Error("the same effective config again replaced the recorded one")
	}
}
