package sqlite

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// BenchmarkPushWrites stores a config push's reports: 5,000 agents, each
// record about 880 bytes, take a new config status and effective config
// through 64 concurrent writers (the group-commit writer batches them),
// in the order the agents' ids sort (a push goes out in that order) or
// shuffled.
func BenchmarkPushWrites(b *testing.B) {
	for _, order := range []string{"sorted", "shuffled"} {
		b.Run(order, func(b *testing.B) {
			st, err := Open(b.Context(), filepath.Join(b.TempDir(), "fleet.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			const n = 5000
			agents := make([]*store.Agent, n)
			for i := range n {
				// Enrolled in id order (time-ordered ids).
				a := &store.Agent{ID: fmt.Sprintf("%032x", i), ProjectID: "p", Hostname: fmt.Sprintf("host-%d", i), Platform: "systemd", Version: "0.1.0",
					Labels:      map[string]string{"platform": "systemd", "hostname": fmt.Sprintf("host-%d", i), "os": "linux", "version": "0.1.0"},
					Description: map[string]string{"host.name": fmt.Sprintf("host-%d", i), "os.type": "linux", "service.version": "0.1.0", "service.name": "fleetprof-agent", "service.instance.id": fmt.Sprintf("%032x", i)},
					Connected:   true, Healthy: true, Health: "sampling", CredentialID: "c", CredentialHash: strings.Repeat("ab", 32)}
				if err := st.UpsertAgent(b.Context(), a); err != nil {
					b.Fatal(err)
				}
				agents[i] = a
			}
			if order == "shuffled" {
				rand.Shuffle(n, func(i, j int) { agents[i], agents[j] = agents[j], agents[i] })
			}
			k := 0
			for b.Loop() {
				k++
				body := fmt.Sprintf("sampling: {frequency_hz: %d}\nexternal_labels: {pad: %q}\n", 19+k, strings.Repeat("x", 900))
				next := make(chan *store.Agent, 64)
				var wg sync.WaitGroup
				for range 64 {
					wg.Go(func() {
						for a := range next {
							a.ConfigHash, a.ConfigStatus, a.EffectiveConfig = fmt.Sprintf("%064x", k), "APPLIED", body
							if err := st.UpsertAgent(b.Context(), a); err != nil {
								b.Error(err)
							}
						}
					})
				}
				for _, a := range agents {
					next <- a
				}
				close(next)
				wg.Wait()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/n, "µs/agent")
		})
	}
}
