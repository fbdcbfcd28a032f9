package sqlite

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// BenchmarkListAgentsBrief lists 5,000 agents brief (what a rollout's
// Apply and its stage judgements read), each record about 1.4 KB with a
// description and an effective config, as after a push.
func BenchmarkListAgentsBrief(b *testing.B) {
	st, err := Open(b.Context(), filepath.Join(b.TempDir(), "fleet.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const n = 5000
	for i := range n {
		a := &store.Agent{ID: fmt.Sprintf("%032x", i), ProjectID: "p", Hostname: fmt.Sprintf("host-%d", i), Platform: "systemd", Version: "0.1.0",
			Labels:      map[string]string{"platform": "systemd", "node": fmt.Sprint(i), "team": "perf"},
			Description: map[string]string{"host.name": fmt.Sprintf("host-%d", i), "os.type": "linux", "service.version": "0.1.0"},
			Connected:   true, Healthy: true, Health: "sampling", CredentialID: "c", CredentialHash: strings.Repeat("ab", 32),
			ConfigHash: strings.Repeat("cd", 32), ConfigStatus: "APPLIED", EffectiveConfig: "sampling: {frequency_hz: 49}\nexternal_labels: {pad: \"" + strings.Repeat("x", 900) + "\"}\n"}
		if err := st.UpsertAgent(b.Context(), a); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		as, err := st.ListAgents(b.Context(), store.AgentFilter{ProjectID: "p", Brief: true})
		if err != nil || len(as) != n {
			b.Fatalf("%d agents, %v", len(as), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/n, "µs/agent")
}
