package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "fleet.db"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestBus: one process, so the bus is in-process.
func TestBus(t *testing.T) {
	storetest.RunBus(t, func(t *testing.T) (store.Bus, store.Bus) {
		b := &store.LocalBus{}
		return b, b
	})
}
