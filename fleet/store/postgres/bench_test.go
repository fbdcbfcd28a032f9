package postgres_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/postgres"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
	"github.com/fleetprof/fleetprof/test/pg"
)

// BenchmarkWrites runs the same write workload on SQLite and on
// PostgreSQL: agent status updates (UpsertAgent of an existing agent at
// its version, as the OpAMP server writes them) and token creation, by
// 8 concurrent writers. test/bench.d/70-store.sh reports the ratio.
func BenchmarkWrites(b *testing.B) {
	backends := []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"sqlite", func(b *testing.B) store.Store {
			s, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "fleet.db"))
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"postgres", func(b *testing.B) store.Store {
			s, err := postgres.Open(b.Context(), pg.NewDatabase(b), nil)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
	for _, be := range backends {
		b.Run(be.name+"/UpsertAgent", func(b *testing.B) {
			s := be.open(b)
			defer s.Close()
			const agents = 256
			var seq atomic.Int64
			for i := range agents {
				if err := s.UpsertAgent(b.Context(), storetest.Agent(fmt.Sprint("a", i), "p")); err != nil {
					b.Fatal(err)
				}
			}
			b.SetParallelism(4) // 8 writers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				// Each writer owns its agents, so versions never collide.
				w := seq.Add(1)
				mine := map[int]*store.Agent{}
				i := 0
				for pb.Next() {
					id := int(w-1)*32 + i%32
					i++
					a := mine[id]
					if a == nil {
						var err error
						if a, err = s.AgentByID(b.Context(), fmt.Sprint("a", id%agents)); err != nil {
							b.Error(err)
							return
						}
						mine[id] = a
					}
					a.Health = fmt.Sprint("ok ", i)
					if err := s.UpsertAgent(b.Context(), a); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(be.name+"/StageStart", func(b *testing.B) {
			// One rollout stage start of stageAgents agents: their rows
			// and assignments in one ApplyRolloutChange.
			s := be.open(b)
			defer s.Close()
			const stageAgents = 2000
			cv := &store.ConfigVersion{ID: "c1", ProjectID: "p", Hash: "h1", YAML: "x", CreatedAt: storetest.Now}
			if err := s.CreateConfigVersion(b.Context(), cv); err != nil {
				b.Fatal(err)
			}
			ras := make([]*store.RolloutAgent, stageAgents)
			for i := range ras {
				ras[i] = &store.RolloutAgent{RolloutID: "r1", AgentID: fmt.Sprintf("a%05d", i), State: "waiting", UpdatedAt: storetest.Now}
			}
			if err := s.CreateRollout(b.Context(), storetest.Rollout("r1", "p", cv), ras); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				ch := &store.RolloutChange{}
				for _, ra := range ras {
					u := *ra
					u.State, u.Error = "assigned", fmt.Sprint(i)
					ch.Agents = append(ch.Agents, &u)
					ch.Assign = append(ch.Assign, &store.Assignment{AgentID: ra.AgentID, ProjectID: "p", ConfigID: cv.ID, ConfigHash: cv.Hash, RolloutID: "r1", UpdatedAt: storetest.Now})
				}
				if err := s.ApplyRolloutChange(b.Context(), ch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*stageAgents), "ns/agent")
		})
		b.Run(be.name+"/CreateToken", func(b *testing.B) {
			s := be.open(b)
			defer s.Close()
			var seq atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.CreateToken(b.Context(), storetest.Token(fmt.Sprint("t", seq.Add(1)), "p")); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
