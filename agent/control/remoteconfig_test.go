package control

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/protobufs"
)

// statusRecorder is an OpAMP client that records the config statuses the
// agent reports.
type statusRecorder struct {
	client.OpAMPClient
	mu       sync.Mutex
	statuses []protobufs.RemoteConfigStatuses
}

func (r *statusRecorder) SetRemoteConfigStatus(s *protobufs.RemoteConfigStatus) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statuses = append(r.statuses, s.Status)
	return nil
}

func (r *statusRecorder) UpdateEffectiveConfig(context.Context) error { return nil }

func (r *statusRecorder) got() []protobufs.RemoteConfigStatuses {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]protobufs.RemoteConfigStatuses(nil), r.statuses...)
}

// A quick apply reports its result alone; one that takes longer than
// applyingAfter reports APPLYING first.
func TestApplyingOnlyWhenSlow(t *testing.T) {
	const (
		applying = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING
		applied  = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED
		failed   = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
	)
	// Thresholds far from the apply's duration either way, so that a
	// loaded CI machine cannot turn one case into the other.
	defer func(d time.Duration) { applyingAfter = d }(applyingAfter)
	for _, tc := range []struct {
		name      string
		threshold time.Duration
		delay     time.Duration
		fail      bool
		want      []protobufs.RemoteConfigStatuses
	}{
		{"quick", time.Minute, 0, false, []protobufs.RemoteConfigStatuses{applied}},
		{"quick failure", time.Minute, 0, true, []protobufs.RemoteConfigStatuses{failed}},
		{"slow", 10 * time.Millisecond, 2 * time.Second, false, []protobufs.RemoteConfigStatuses{applying, applied}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applyingAfter = tc.threshold
			o := Options{FleetURL: "http://127.0.0.1:1", BootstrapToken: "boot", StateDir: t.TempDir()}
			o.Callbacks.OnRemoteConfig = func(ctx context.Context, rc *protobufs.AgentRemoteConfig) ([]byte, error) {
				time.Sleep(tc.delay)
				if tc.fail {
					return nil, context.DeadlineExceeded
				}
				return nil, nil
			}
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			rec := &statusRecorder{}
			c.applyRemoteConfig(t.Context(), rec, &protobufs.AgentRemoteConfig{ConfigHash: []byte{1, 2, 3}})
			got := rec.got() // the timer is stopped: nothing comes later
			if len(got) != len(tc.want) {
				t.Fatalf("reported %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("reported %v, want %v", got, tc.want)
				}
			}
		})
	}
}
