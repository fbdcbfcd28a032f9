package sqlite_test

import (
	"database/sql"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/fleet/store/storetest"
)

// A store from before the credential columns (migration 0006) lists the
// credentials its records hold once migrated.
func TestCredentialColumnsFilledFromRecords(t *testing.T) {
	path := t.TempDir() + "/f.db"
	st, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	a := storetest.Agent("a1", "p1")
	a.CredentialID, a.CredentialHash = "j1", "00ff"
	b := storetest.Agent("a2", "p1")
	for _, ag := range []*store.Agent{a, b} {
		if err := st.UpsertAgent(t.Context(), ag); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	// Back to the schema before 0006: the records alone hold credentials.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`ALTER TABLE agents DROP COLUMN credential_id`,
		`ALTER TABLE agents DROP COLUMN credential_hash`,
		`DELETE FROM schema_migrations WHERE version = '0006_agent_credential'`,
	} {
		if _, err := db.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	st, err = sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.ListAgentCredentials(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.AgentCredential{{AgentID: "a1", CredentialID: "j1", CredentialHash: "00ff"}}, got, cmpopts.IgnoreFields(store.AgentCredential{}, "Record", "RowVersion")); diff != "" {
		t.Errorf("credentials after the migration (-want +got):\n%s", diff)
	}
}
