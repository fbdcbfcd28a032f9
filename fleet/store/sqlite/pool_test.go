package sqlite_test

import (
	"sync"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
)

// Concurrent readers reuse the pool's connections (and the statements
// prepared on them) instead of closing and opening them.
func TestReadersKeepTheirConnections(t *testing.T) {
	st, err := sqlite.Open(t.Context(), t.TempDir()+"/f.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.UpsertAgent(t.Context(), storetest.Agent("a1", "p1")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 200 {
				if _, err := st.AgentByID(t.Context(), "a1"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	s := st.DB().Stats()
	if s.MaxIdleClosed != 0 || s.OpenConnections < 3 {
		t.Errorf("read pool after 16 concurrent readers: %d connections closed for want of idle room, %d open; want none closed", s.MaxIdleClosed, s.OpenConnections)
	}
}
