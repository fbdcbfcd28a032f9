package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

var shared *Server

// Main runs a test package with one shared server: call it from
// TestMain as os.Exit(pg.Main(m)). When PostgreSQL is not installed the
// tests that call Shared skip, unless Required, where Main fails.
// FLEETPROF_PG_DURABLE=1 keeps fsync on (benchmarks).
func Main(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := StartWith(ctx, Options{Durable: os.Getenv("FLEETPROF_PG_DURABLE") == "1"})
	cancel()
	switch {
	case err == nil:
		shared = s
		defer s.Stop()
	case errors.Is(err, ErrNotInstalled) && !Required():
		fmt.Fprintln(os.Stderr, "pg:", err, "- PostgreSQL tests will skip")
	default:
		fmt.Fprintln(os.Stderr, "pg: start PostgreSQL:", err)
		return 1
	}
	return m.Run()
}

// Shared returns the package's server (from Main), skipping the test when
// there is none.
func Shared(t testing.TB) *Server {
	t.Helper()
	if shared == nil {
		if Required() {
			t.Fatal("PostgreSQL is required (FLEETPROF_REQUIRE_PRIVILEGED=1) but was not started; call pg.Main from TestMain")
		}
		t.Skip("PostgreSQL not available")
	}
	return shared
}

// NewDatabase returns the DSN of a fresh database on the shared server.
func NewDatabase(t testing.TB) string {
	t.Helper()
	dsn, err := Shared(t).NewDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}
