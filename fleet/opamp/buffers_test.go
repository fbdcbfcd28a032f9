package opamp

import (
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"

	"github.com/fleetprof/fleetprof/internal/describe"
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

// A WebSocket on the small buffers carries messages larger than both
// buffers, in both directions.
func TestSmallBuffersCarryLargeMessages(t *testing.T) {
	f := newFixture(t, Options{})
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := strings.Repeat("h", 3*wsReadBuffer)
	msg := &protobufs.AgentToServer{InstanceUid: uid, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd", Hostname: big})}
	if err := c.WriteMessage(websocket.BinaryMessage, append([]byte{0}, marshal(t, msg)...)); err != nil {
		t.Fatal(err)
	}
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var out protobufs.ServerToAgent
	if err := proto.Unmarshal(b[1:], &out); err != nil {
		t.Fatal(err)
	}
	if out.GetConnectionSettings().GetOpamp() == nil || len(b) < wsWriteBuffer {
		t.Fatalf("reply of %d bytes without a credential offer: %v", len(b), &out)
	}
	a, err := f.st.AgentByID(t.Context(), "30313233343536373839616263646566")
	if err != nil || a.Hostname != big {
		t.Fatalf("agent record %+v, %v: want the long hostname", a, err)
	}
}
