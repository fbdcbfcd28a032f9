package sqlite_test

import (
	"database/sql"
	"testing"

	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
)

// Readers that ran at once leave their connections idle in the pool (with
// the statements prepared on them) instead of closing them: a reconnect
// storm reads with all 8 at once.
func TestReadersKeepTheirConnections(t *testing.T) {
	st, err := sqlite.Open(t.Context(), t.TempDir()+"/f.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db := st.DB()
	var conns []*sql.Conn
	for range 8 {
		c, err := db.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if s := db.Stats(); s.MaxIdleClosed != 0 || s.Idle != 8 {
		t.Errorf("read pool after 8 readers at once: %d connections closed for want of idle room, %d idle; want none closed, 8 idle", s.MaxIdleClosed, s.Idle)
	}
}
