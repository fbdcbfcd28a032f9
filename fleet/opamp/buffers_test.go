package opamp

import (
	"testing"

	"github.com/open-telemetry/opamp-go/protobufs"
)

// Plain-HTTP OpAMP answers close their connection: an idle keep-alive
// would hold buffers, a goroutine and a file on the fleet.
func TestPlainHTTPClosesConnection(t *testing.T) {
	f := newFixture(t, Options{})
	resp, _ := post(t, f.http.URL, f.boot, marshal(t, &protobufs.AgentToServer{InstanceUid: uid}))
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("status %d, close %v: want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
}
