package opamp

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprof/fleetprof/fleet/store"
)

func counterVec(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A connection keeps the agent record from one status report to the
// next: APPLIED right after APPLYING needs no store read. A write by
// anyone else in between is not lost: the kept record's row version is
// stale, the write conflicts and the report is applied to a fresh read.
// Bare heartbeats in between keep it.
func TestStatusReportsShareOneRead(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registerer: reg})
	cred := enrolled(t, f, "cached")
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("cached"))
	readMsg(t, a)

	status := func(seq uint64, st protobufs.RemoteConfigStatuses) *protobufs.AgentToServer {
		return &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: seq, RemoteConfigStatus: &protobufs.RemoteConfigStatus{
			LastRemoteConfigHash: []byte("0123456789abcdef0123456789abcdef"), Status: st}}
	}
	reads := func() float64 { return counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "read") }
	hits := func() float64 { return counterVec(t, reg, "fleetprof_opamp_agent_record_reads_total", "hit") }

	r0, h0 := reads(), hits()
	stored := func(what string, ok func(*store.Agent) bool) {
		t.Helper()
		waitFor(t, what, func() bool {
			ag, err := f.st.AgentByID(t.Context(), uidHex)
			return err == nil && ok(ag)
		})
	}
	sendMsg(t, a, status(1, protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING))
	stored("APPLYING stored", func(ag *store.Agent) bool { return ag.ConfigStatus == "APPLYING" })
	sendMsg(t, a, status(2, protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED))
	stored("APPLIED stored", func(ag *store.Agent) bool { return ag.ConfigStatus == "APPLIED" })
	if r, h := reads()-r0, hits()-h0; r != 0 || h != 2 {
		t.Errorf("APPLYING then APPLIED after the connect report: %v store reads, %v kept records; want 0 and 2", r, h)
	}
	// The record is kept across bare heartbeats: the next report (a
	// push's APPLIED, typically) reads nothing.
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 3})
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 4, Health: &protobufs.ComponentHealth{Healthy: true, Status: "steady"}})
	stored("health after a heartbeat stored", func(ag *store.Agent) bool { return ag.Health == "steady" })
	if r := reads() - r0; r != 0 {
		t.Errorf("%v store reads for a report after a bare heartbeat; want 0 (the record is kept)", r)
	}
	ag, err := f.st.AgentByID(t.Context(), uidHex)
	if err != nil || ag.ConfigStatus != "APPLIED" {
		t.Fatalf("stored record %+v, %v: want APPLIED", ag, err)
	}
	// Each status stored once: the health report carried none.
	for _, st := range []string{"APPLYING", "APPLIED"} {
		if n := counterVec(t, reg, "fleetprof_opamp_config_status_stored_total", st); n != 1 {
			t.Errorf("fleetprof_opamp_config_status_stored_total{status=%q} = %v, want 1", st, n)
		}
	}

	// Someone else writes the record (as the console does for labels).
	ag.CustomLabels = map[string]string{"team": "storage"}
	if err := f.st.UpsertAgent(t.Context(), ag); err != nil {
		t.Fatal(err)
	}
	r0 = reads()
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 5, Health: &protobufs.ComponentHealth{Healthy: true, Status: "fine"}})
	stored("health stored", func(ag *store.Agent) bool { return ag.Health == "fine" })
	ag, err = f.st.AgentByID(t.Context(), uidHex)
	if err != nil || ag.Health != "fine" || ag.CustomLabels["team"] != "storage" || ag.ConfigStatus != "APPLIED" {
		t.Fatalf("after a write by someone else and a health report: %+v, %v; want both kept", ag, err)
	}
	if r := reads() - r0; r != 1 {
		t.Errorf("%v store reads for a report after someone else's write; want 1 (the retry after the conflict)", r)
	}

	// A report that changes nothing judged from the kept record is judged
	// again from a fresh read: here the fleet offered a credential in
	// between (another writer), so the agent's failure report must mark
	// the rotation failed, though by the kept record nothing was pending.
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 6, Health: &protobufs.ComponentHealth{Healthy: true, Status: "fine again"}})
	stored("health stored again", func(ag *store.Agent) bool { return ag.Health == "fine again" })
	ag, err = f.st.AgentByID(t.Context(), uidHex)
	if err != nil {
		t.Fatal(err)
	}
	ag.PendingCredentialID, ag.RotationStatus = "candidate", "pending"
	if err := f.st.UpsertAgent(t.Context(), ag); err != nil {
		t.Fatal(err)
	}
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7, ConnectionSettingsStatus: &protobufs.ConnectionSettingsStatus{
		Status: protobufs.ConnectionSettingsStatuses_ConnectionSettingsStatuses_FAILED, ErrorMessage: "candidate refused"}})
	stored("rotation failure stored", func(ag *store.Agent) bool {
		return ag.RotationStatus == "failed" && ag.RotationError == "candidate refused"
	})

}

// An effective config that is exactly the pushed body of the config the
// agent reports is recorded by reference to that version, not in full;
// one that is not (another config, YAML) is recorded in full; a report
// of the same reference again writes nothing.
func TestEffectiveConfigByReference(t *testing.T) {
	reg := prometheus.NewRegistry()
	body := []byte(`{"sampling":{"frequency_hz":49,"duration":"10s"},"targets":{"systemd":{},"kubernetes":{},"processes":{}},"upload":{"address":"","protocol":"parca","insecure":false}}`)
	hash := []byte("0123456789abcdef0123456789abcdef")
	hashHex := fmt.Sprintf("%x", hash)
	var lookups atomic.Int64
	f := newFixture(t, Options{Registerer: reg, ConfigJSON: func(projectID, h string) []byte {
		lookups.Add(1)
		if projectID == "p1" && h == hashHex {
			return body
		}
		return nil
	}})
	cred := enrolled(t, f, "byref")
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("byref"))
	readMsg(t, a)
	report := func(seq uint64, eff string) *protobufs.AgentToServer {
		return &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: seq,
			RemoteConfigStatus: &protobufs.RemoteConfigStatus{LastRemoteConfigHash: hash, Status: protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED},
			EffectiveConfig: &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
				"": {Body: []byte(eff), ContentType: "application/json"}}}}}
	}
	record := func(what string, ok func(*store.Agent) bool) *store.Agent {
		t.Helper()
		var ag *store.Agent
		waitFor(t, what, func() bool {
			var err error
			ag, err = f.st.AgentByID(t.Context(), uidHex)
			return err == nil && ok(ag)
		})
		return ag
	}
	sendMsg(t, a, report(1, string(body)))
	ag := record("effective config by reference", func(ag *store.Agent) bool { return ag.EffectiveConfigHash != "" })
	if ag.EffectiveConfigHash != hashHex || ag.EffectiveConfig != "" || ag.ConfigStatus != "APPLIED" {
		t.Fatalf("record %q / %q / %s; want the reference %s and no body", ag.EffectiveConfigHash, ag.EffectiveConfig, ag.ConfigStatus, hashHex)
	}
	// The same again: nothing to write.
	v := ag.RowVersion
	sendMsg(t, a, report(2, string(body)))
	sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 3, Health: &protobufs.ComponentHealth{Healthy: true, Status: "after"}})
	ag = record("the health report after it", func(ag *store.Agent) bool { return ag.Health == "after" })
	if ag.RowVersion != v+1 {
		t.Errorf("row version %d after the same effective config and a health report, was %d: want one write", ag.RowVersion, v)
	}
	// A push of another config FAILED and left the agent on this one:
	// still recorded by reference.
	failed := report(4, string(body))
	failed.RemoteConfigStatus = &protobufs.RemoteConfigStatus{LastRemoteConfigHash: []byte("fedcba9876543210fedcba9876543210"),
		Status: protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED, ErrorMessage: "no"}
	sendMsg(t, a, failed)
	ag = record("the failure", func(ag *store.Agent) bool { return ag.ConfigStatus == "FAILED" })
	if ag.EffectiveConfigHash != hashHex || ag.EffectiveConfig != "" {
		t.Errorf("after a failed push: record %q / %q; want the reference %s kept", ag.EffectiveConfigHash, ag.EffectiveConfig, hashHex)
	}
	// Another body (an agent that reports YAML): recorded in full, and
	// the reference dropped.
	sendMsg(t, a, report(5, "sampling:\n  frequency_hz: 49\n"))
	ag = record("effective config in full", func(ag *store.Agent) bool { return ag.EffectiveConfig != "" })
	if ag.EffectiveConfigHash != "" || ag.EffectiveConfig != "sampling:\n  frequency_hz: 49\n" {
		t.Errorf("record %q / %q; want the body in full and no reference", ag.EffectiveConfigHash, ag.EffectiveConfig)
	}
	if lookups.Load() == 0 {
		t.Error("ConfigJSON never asked")
	}
}
