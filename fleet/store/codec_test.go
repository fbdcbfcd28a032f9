package store

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

func fullAgent() *Agent {
	exp := time.Date(2026, 11, 30, 7, 0, 0, 123456789, time.UTC)
	return &Agent{
		ID: "0123456789abcdef0123456789abcdef", ProjectID: "p1", Hostname: "host-1 <&> \"quoted\"", Platform: "systemd", Version: "0.1.0",
		Labels: map[string]string{"platform": "systemd", "team": "perf", "ünïcode": "✓"}, CustomLabels: map[string]string{"tier": "gold"},
		Description:  map[string]string{"host.name": "host-1", "fleetprof.token_label.team": "perf", "esc": "line\nbreak\ttab\u2028"},
		EnrolledWith: "b1", Connected: true, LastSeen: time.Date(2026, 11, 29, 7, 0, 0, 1, time.FixedZone("x", 3600)), Healthy: true, Health: "sampling",
		CredentialID: "c1", CredentialExpiresAt: &exp, CredentialHash: "ab12", PendingCredentialID: "c2", RotationStatus: "pending", RotationError: "e",
		Revoked: true, ConfigHash: "cd34", ConfigStatus: "APPLIED", ConfigError: "none", EffectiveConfig: "sample_rate: 19\n", EffectiveConfigHash: "ef56",
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), UpdatedAt: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC), RowVersion: 7,
	}
}

// The record codec reads what encoding/json wrote (records stored before
// it) and writes what encoding/json reads, field for field.
func TestAgentCodecMatchesEncodingJSON(t *testing.T) {
	for _, a := range []*Agent{fullAgent(), {ID: "bare"}} {
		std, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeAgent(string(std), a.RowVersion)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a, got); diff != "" {
			t.Errorf("DecodeAgent of an encoding/json document (-want +got):\n%s", diff)
		}
		doc, err := EncodeAgent(a)
		if err != nil {
			t.Fatal(err)
		}
		var back Agent
		if err := json.Unmarshal(doc, &back); err != nil {
			t.Fatalf("encoding/json refuses EncodeAgent's %s: %v", doc, err)
		}
		if diff := cmp.Diff(a, &back); diff != "" {
			t.Errorf("encoding/json reading EncodeAgent's document (-want +got):\n%s", diff)
		}
	}
	if _, err := DecodeAgent(`{"id": 1}`, 0); err == nil {
		t.Error("a number for the id decoded")
	}
	if _, err := DecodeAgent(`{"id": "x"`, 0); err == nil {
		t.Error("a truncated document decoded")
	}
}

// FuzzDecodeAgent: whatever the bytes, DecodeAgent does not panic, and a
// document encoding/json reads into an Agent decodes, to the same Agent.
func FuzzDecodeAgent(f *testing.F) {
	std, _ := json.Marshal(fullAgent())
	f.Add(string(std))
	f.Add(`{"id":"x","labels":null,"credentialExpiresAt":null}`)
	f.Add(`{"ID":"case","LABELS":{"a":"b"},"rowVersion":"7"}`)
	f.Fuzz(func(t *testing.T, doc string) {
		got, err := DecodeAgent(doc, 3)
		var want Agent
		if json.Unmarshal([]byte(doc), &want) != nil {
			return // a document encoding/json refuses may decode or not; it must not panic
		}
		if err != nil {
			t.Fatalf("DecodeAgent(%q) refuses what encoding/json reads: %v", doc, err)
		}
		want.RowVersion = 3
		if diff := cmp.Diff(&want, got); diff != "" {
			t.Errorf("DecodeAgent(%q) differs from encoding/json (-want +got):\n%s", doc, diff)
		}
		b, err := DecodeBrief(doc, 3)
		if err != nil {
			t.Fatalf("DecodeBrief(%q) refuses what encoding/json reads: %v", doc, err)
		}
		if diff := cmp.Diff(brief(&want), b); diff != "" {
			t.Errorf("DecodeBrief(%q) differs from encoding/json's brief fields (-want +got):\n%s", doc, diff)
		}
	})
}

// brief is a with only BriefFields set.
func brief(a *Agent) *Agent {
	out := &Agent{}
	src, dst := reflect.ValueOf(a).Elem(), reflect.ValueOf(out).Elem()
	for _, f := range BriefFields {
		dst.FieldByName(f).Set(src.FieldByName(f))
	}
	return out
}

// DecodeBrief fills exactly BriefFields, as the whole record holds them.
func TestDecodeBrief(t *testing.T) {
	for _, a := range []*Agent{fullAgent(), {ID: "bare"}} {
		doc, err := EncodeAgent(a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeBrief(string(doc), a.RowVersion)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(brief(a), got); diff != "" {
			t.Errorf("DecodeBrief (-want +got):\n%s", diff)
		}
	}
	if _, err := DecodeBrief(`{"labels": []}`, 0); err == nil {
		t.Error("a list for the labels decoded")
	}
}

// Records of agents that run the same config share one copy of their
// effective config: a fleet keeps a record per connected agent.
func TestDecodedRecordsShareTheirEffectiveConfig(t *testing.T) {
	eff := `{"sampling":{"frequency_hz":49,"duration":"10s"},"external_labels":{"pad":"` + strings.Repeat("x", 900) + `"}}`
	var recs []*Agent
	for _, id := range []string{"a1", "a2"} {
		doc, err := EncodeAgent(&Agent{ID: id, EffectiveConfig: eff})
		if err != nil {
			t.Fatal(err)
		}
		a, err := DecodeAgent(string(doc), 1)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, a)
	}
	if recs[0].EffectiveConfig != eff || unsafe.StringData(recs[0].EffectiveConfig) != unsafe.StringData(recs[1].EffectiveConfig) {
		t.Errorf("two records of the same effective config hold two copies")
	}
	if Intern("") != "" || Intern("x") != "x" {
		t.Error("Intern changed a string")
	}
}
