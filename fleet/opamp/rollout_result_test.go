package opamp

import (
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// An agent's status report settles its own row in the running rollout of
// the config it reports, written with the record: APPLYING leaves it
// assigned, APPLIED while healthy makes it applied.
func TestReportSettlesRolloutRow(t *testing.T) {
	f := newFixture(t, Options{Callbacks: Callbacks{RolloutResult: rollout.Result}})
	ctx := t.Context()
	hash := "0123456789abcdef0123456789abcdef"
	cv := &store.ConfigVersion{ID: "c1", ProjectID: "p1", Hash: hash, YAML: "x", CreatedAt: time.Now()}
	if err := f.st.CreateConfigVersion(ctx, cv); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	r := &store.Rollout{ID: "r1", ProjectID: "p1", ConfigID: cv.ID, ConfigHash: hash, Stages: 1, Stage: 0, Status: rollout.StatusRunning,
		StageStartedAt: &now, CreatedAt: now, UpdatedAt: now}
	if err := f.st.CreateRollout(ctx, r, []*store.RolloutAgent{{RolloutID: "r1", AgentID: uidHex, Stage: 0, State: rollout.AgentAssigned, UpdatedAt: now}}); err != nil {
		t.Fatal(err)
	}
	row := func() string {
		ras, err := f.st.ListRolloutAgents(ctx, "r1")
		if err != nil || len(ras) != 1 {
			t.Fatalf("rollout rows: %v, %v", ras, err)
		}
		return ras[0].State
	}

	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("settles"))
	cred := strings.TrimPrefix(readMsg(t, c).GetConnectionSettings().GetOpamp().GetHeaders().GetHeaders()[0].GetValue(), "Bearer ")
	c.Close()
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("settles"))
	readMsg(t, a)
	h, _ := hex.DecodeString(hash)
	status := func(seq uint64, st protobufs.RemoteConfigStatuses) *protobufs.AgentToServer {
		return &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: seq, RemoteConfigStatus: &protobufs.RemoteConfigStatus{LastRemoteConfigHash: h, Status: st}}
	}
	stored := func(what string, ok func(*store.Agent) bool) {
		t.Helper()
		waitFor(t, what, func() bool {
			ag, err := f.st.AgentByID(ctx, uidHex)
			return err == nil && ok(ag)
		})
	}
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 1, Health: &protobufs.ComponentHealth{Healthy: true, Status: "fine"}})
	stored("health stored", func(ag *store.Agent) bool { return ag.Healthy })
	sendMsg(t, a, status(2, protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING))
	stored("APPLYING stored", func(ag *store.Agent) bool { return ag.ConfigStatus == "APPLYING" })
	if got := row(); got != rollout.AgentAssigned {
		t.Errorf("row after APPLYING: %s, want assigned", got)
	}
	sendMsg(t, a, status(3, protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED))
	stored("APPLIED stored", func(ag *store.Agent) bool { return ag.ConfigStatus == "APPLIED" })
	if got := row(); got != rollout.AgentApplied {
		t.Errorf("row after APPLIED: %s, want applied (settled with the report)", got)
	}
}
