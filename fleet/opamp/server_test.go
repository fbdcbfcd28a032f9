package opamp

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/token"
)

type fixture struct {
	srv  *Server
	http *httptest.Server
	st   *sqlite.Store
	auth *auth.Authenticator
	boot string
	proj string
}

func newFixture(t testing.TB, o Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, err := token.OpenKeySet(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	au, err := auth.New(ctx, auth.Options{Keys: keys, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	o.Store, o.Auth = st, au
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := serve(t, srv)
	p := &store.Project{ID: "p1", Name: "p", CreatedAt: time.Now()}
	if err := st.CreateProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	boot, _, err := au.Issue(ctx, auth.IssueRequest{Kind: token.KindBootstrap, ProjectID: "p1", Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, http: hs, st: st, auth: au, boot: boot, proj: "p1"}
}

// serve serves srv at Path on a loopback test server until the test ends.
func serve(t testing.TB, srv *Server) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(Path, srv.Handler())
	hs := httptest.NewUnstartedServer(mux)
	hs.Config.ConnContext = srv.ConnContext
	// WebSocket handshakes are taken by the server's poller, as in the
	// fleet; the TLS tests serve them through net/http.
	hs.Listener = srv.Listen(hs.Listener)
	hs.Start()
	t.Cleanup(func() { srv.Shutdown(); hs.Close() })
	return hs
}

var uid = []byte("0123456789abcdef")

func post(t testing.TB, url, tok string, body []byte) (*http.Response, *protobufs.ServerToAgent) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	out := &protobufs.ServerToAgent{}
	if resp.StatusCode == 200 {
		_ = proto.Unmarshal(b.Bytes(), out)
	}
	return resp, out
}

func marshal(t testing.TB, m *protobufs.AgentToServer) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The first message on a bootstrap connection enrolls and offers a
// credential for OpAMP and for uploads, with the server's capabilities.
func TestEnrollOffersCredential(t *testing.T) {
	f := newFixture(t, Options{})
	resp, out := post(t, f.http.URL, f.boot, marshal(t, &protobufs.AgentToServer{InstanceUid: uid, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd"})}))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cs := out.GetConnectionSettings()
	if cs == nil || cs.Opamp == nil || cs.OtherConnections["profiles"] == nil || len(cs.Hash) != 32 {
		t.Fatalf("no credential offer: %v", out)
	}
	if out.Capabilities&uint64(protobufs.ServerCapabilities_ServerCapabilities_OffersConnectionSettings) == 0 {
		t.Fatalf("capabilities %b", out.Capabilities)
	}
	a, err := f.st.AgentByID(context.Background(), "30313233343536373839616263646566")
	if err != nil {
		t.Fatal(err)
	}
	if a.Platform != "systemd" || a.PendingCredentialID == "" || a.Connected {
		t.Fatalf("agent record %+v", a)
	}
	// The candidate proves itself by connecting; it becomes current.
	cred := strings.TrimPrefix(cs.Opamp.Headers.Headers[0].Value, "Bearer ")
	if resp, _ := post(t, f.http.URL, cred, marshal(t, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 1})); resp.StatusCode != 200 {
		t.Fatalf("candidate refused: %d", resp.StatusCode)
	}
	a, _ = f.st.AgentByID(context.Background(), a.ID)
	if a.CredentialID == "" || a.PendingCredentialID != "" || a.RotationStatus != "" {
		t.Fatalf("after proof: %+v", a)
	}
	// A credential can't speak for another agent.
	_, out = post(t, f.http.URL, cred, marshal(t, &protobufs.AgentToServer{InstanceUid: []byte("fedcba9876543210")}))
	if out.ErrorResponse == nil {
		t.Fatal("credential of agent A accepted for agent B")
	}
}

// A gap in sequence numbers (or a first message without description)
// makes the server ask for the full state.
func TestSequenceGapAsksFullState(t *testing.T) {
	f := newFixture(t, Options{})
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	push := func(m *protobufs.AgentToServer) {
		b := append([]byte{0}, marshal(t, m)...)
		if err := c.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	send := func(m *protobufs.AgentToServer) *protobufs.ServerToAgent {
		push(m)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		out := &protobufs.ServerToAgent{}
		if err := proto.Unmarshal(data[1:], out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	full := uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)
	if out := send(&protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 1, AgentDescription: describe.Encode(describe.Agent{})}); out.Flags&full != 0 {
		t.Fatal("full state asked on a complete first message")
	}
	// A bare heartbeat without a gap gets no answer on a WebSocket (had
	// it one, the next read would return it, without the flag).
	push(&protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 2})
	if out := send(&protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 5}); out.Flags&full == 0 {
		t.Fatal("no full-state request after a sequence gap (or an answer to a bare heartbeat)")
	}
	// Garbage frames are logged and skipped; the connection lives on.
	_ = c.WriteMessage(websocket.BinaryMessage, []byte{0, 0xff, 0xff, 0xff})
	_ = c.WriteMessage(websocket.TextMessage, []byte("hello"))
	if out := send(&protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 9}); out.Flags&full == 0 {
		t.Fatal("connection died after malformed frames")
	}
}

// Past MaxConnections new WebSocket agents get 503 with Retry-After.
func TestAdmissionWhenFull(t *testing.T) {
	f := newFixture(t, Options{MaxConnections: 1})
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.WriteMessage(websocket.BinaryMessage, append([]byte{0}, marshal(t, &protobufs.AgentToServer{InstanceUid: uid, AgentDescription: describe.Encode(describe.Agent{})})...))
	_, _, _ = c.ReadMessage()
	_, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second agent: err=%v resp=%v, want 503 + Retry-After", err, resp)
	}
}

// A gzip bomb on the plain-HTTP transport is refused without inflating it.
func TestHTTPBodyLimit(t *testing.T) {
	f := newFixture(t, Options{MaxMessageBytes: 1 << 20})
	var gz bytes.Buffer
	zw := newGzip(&gz)
	_, _ = zw.Write(make([]byte, 8<<20))
	_ = zw.Close()
	req, _ := http.NewRequest(http.MethodPost, f.http.URL+Path, &gz)
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Authorization", "Bearer "+f.boot)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
}

// FuzzAgentToServer feeds arbitrary bytes to the server's message handler
// over the plain-HTTP transport: nothing may crash, every answer is an
// HTTP status the protocol allows.
func FuzzAgentToServer(f *testing.F) {
	fx := newFixture(f, Options{})
	f.Add(marshal(f, &protobufs.AgentToServer{InstanceUid: uid, AgentDescription: describe.Encode(describe.Agent{Platform: "host"})}))
	f.Add(marshal(f, &protobufs.AgentToServer{InstanceUid: []byte("short")}))
	f.Add(marshal(f, &protobufs.AgentToServer{InstanceUid: uid, RemoteConfigStatus: &protobufs.RemoteConfigStatus{Status: 3, ErrorMessage: "x"}, Health: &protobufs.ComponentHealth{}}))
	f.Add([]byte{0xff, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		resp, _ := post(t, fx.http.URL, fx.boot, body)
		switch resp.StatusCode {
		case 200, 400:
		default:
			t.Fatalf("status %d for %x", resp.StatusCode, body)
		}
	})
}
