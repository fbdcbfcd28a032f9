package storetest

import (
	"time"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Now is the fixed time the fixtures use (millisecond precision, UTC, as
// stores keep it).
var Now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Project returns a valid project.
func Project(id string) *store.Project {
	return &store.Project{ID: id, Name: "project " + id, CreatedAt: Now}
}

// Token returns a valid write-profiles token of project p.
func Token(id, p string) *store.Token {
	return &store.Token{ID: id, ProjectID: p, Name: "token " + id, Kind: "write-profiles", KeyID: "k1",
		Labels: map[string]string{"team": "a"}, CreatedBy: "tester", CreatedAt: Now}
}

// Agent returns a valid connected agent of project p.
func Agent(id, p string) *store.Agent {
	exp := Now.Add(24 * time.Hour)
	return &store.Agent{ID: id, ProjectID: p, Hostname: "host-" + id, Platform: "systemd", Version: "1.0.0",
		Labels: map[string]string{"platform": "systemd", "node": "host-" + id}, Description: map[string]string{"os.type": "linux"},
		EnrolledWith: "boot1", Connected: true, LastSeen: Now, Healthy: true, CredentialID: "cred-" + id, CredentialExpiresAt: &exp}
}

// Rollout returns a pending two-stage rollout of config c in project p.
func Rollout(id, p string, c *store.ConfigVersion) *store.Rollout {
	return &store.Rollout{ID: id, ProjectID: p, ConfigID: c.ID, ConfigHash: c.Hash, Selector: "platform=systemd", Specificity: 1,
		Canary: 1, WavePercent: 100, WavePause: 30 * time.Second, MaxFailurePercent: 10, Stages: 2, Stage: -1, Status: "pending",
		CreatedBy: "tester", CreatedAt: Now, UpdatedAt: Now}
}
