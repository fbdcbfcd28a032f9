package opamp

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"

	"github.com/fleetprof/fleetprof/internal/describe"
)

const uidHex = "30313233343536373839616263646566"

func dialWS(t *testing.T, f *fixture, tok string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	c, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, code)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sendMsg(t *testing.T, c *websocket.Conn, m *protobufs.AgentToServer) {
	t.Helper()
	if err := c.WriteMessage(websocket.BinaryMessage, append([]byte{0}, marshal(t, m)...)); err != nil {
		t.Fatal(err)
	}
}

func readMsg(t *testing.T, c *websocket.Conn) *protobufs.ServerToAgent {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	mt, b, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if mt != websocket.BinaryMessage || len(b) == 0 || b[0] != 0 {
		t.Fatalf("message type %d, %d bytes: want a binary OpAMP message with header 0", mt, len(b))
	}
	out := &protobufs.ServerToAgent{}
	if err := proto.Unmarshal(b[1:], out); err != nil {
		t.Fatal(err)
	}
	return out
}

func enrollMsg(host string) *protobufs.AgentToServer {
	return &protobufs.AgentToServer{InstanceUid: uid, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd", Hostname: host})}
}

// Messages larger than the pooled read buffer pass in both directions.
func TestWebSocketCarriesLargeMessages(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	big := strings.Repeat("h", 3*readBufferSize)
	sendMsg(t, c, enrollMsg(big))
	out := readMsg(t, c)
	if out.GetConnectionSettings().GetOpamp() == nil || string(out.InstanceUid) != string(uid) || out.CustomCapabilities == nil {
		t.Fatalf("first reply %v: want a credential offer, the instance uid and custom capabilities", out)
	}
	a, err := f.st.AgentByID(t.Context(), uidHex)
	if err != nil || a.Hostname != big || !a.Connected {
		t.Fatalf("agent record %+v, %v: want the long hostname, connected", a, err)
	}
}

// A message split into fragments (with a ping between them) is assembled;
// the ping is answered with a pong carrying its payload.
func TestWebSocketFragmentsAndPing(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	pong := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pong <- s; return nil })
	data := append([]byte{0}, marshal(t, enrollMsg("fragmented"))...)
	nc := c.NetConn()
	half := len(data) / 2
	writeRaw(t, nc, false, 0x2, data[:half])
	writeRaw(t, nc, true, 0x9, []byte("are you there"))
	writeRaw(t, nc, true, 0x0, data[half:])
	out := readMsg(t, c) // runs the pong handler on the way
	if out.GetConnectionSettings() == nil {
		t.Fatalf("reply %v: want a credential offer", out)
	}
	select {
	case s := <-pong:
		if s != "are you there" {
			t.Fatalf("pong %q", s)
		}
	default:
		t.Fatal("no pong")
	}
	if a, err := f.st.AgentByID(t.Context(), uidHex); err != nil || a.Hostname != "fragmented" {
		t.Fatalf("agent %+v, %v", a, err)
	}
}

// writeRaw writes one masked client frame.
func writeRaw(t *testing.T, nc net.Conn, fin bool, op byte, p []byte) {
	t.Helper()
	b0 := op
	if fin {
		b0 |= 0x80
	}
	hdr := []byte{b0}
	switch {
	case len(p) < 126:
		hdr = append(hdr, 0x80|byte(len(p)))
	case len(p) < 1<<16:
		hdr = append(hdr, 0x80|126, byte(len(p)>>8), byte(len(p)))
	default:
		t.Fatal("frame too large for this helper")
	}
	mask := []byte{1, 2, 3, 4}
	hdr = append(hdr, mask...)
	body := make([]byte, len(p))
	for i := range p {
		body[i] = p[i] ^ mask[i%4]
	}
	if _, err := nc.Write(append(hdr, body...)); err != nil {
		t.Fatal(err)
	}
}

// Text frames and bytes that are no OpAMP message are dropped, and the
// connection still serves the next good message.
func TestWebSocketMalformedMessagesAreDropped(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, []byte{0, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	sendMsg(t, c, enrollMsg("after-garbage"))
	if out := readMsg(t, c); out.GetConnectionSettings() == nil {
		t.Fatalf("reply %v", out)
	}
}

// Protocol violations close the connection with the status the RFC asks
// for: an oversized message 1009, an unmasked client frame 1002.
func TestWebSocketProtocolErrorsClose(t *testing.T) {
	f := newFixture(t, Options{MaxMessageBytes: 1024})
	for _, tc := range []struct {
		name string
		send func(net.Conn)
		code int
	}{
		{"too big", func(nc net.Conn) { writeRaw(t, nc, true, 0x2, make([]byte, 2000)) }, websocket.CloseMessageTooBig},
		{"unmasked", func(nc net.Conn) { _, _ = nc.Write([]byte{0x82, 0x01, 0x00}) }, websocket.CloseProtocolError},
		{"fragments too big", func(nc net.Conn) {
			writeRaw(t, nc, false, 0x2, make([]byte, 600))
			writeRaw(t, nc, true, 0x0, make([]byte, 600))
		}, websocket.CloseMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWS(t, f, f.boot)
			tc.send(c.NetConn())
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, err := c.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.code {
				t.Fatalf("read: %v: want close %d", err, tc.code)
			}
		})
	}
}

// A close frame from the agent is answered and the agent is recorded
// disconnected.
func TestWebSocketCloseFrame(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("closing"))
	readMsg(t, c)
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("read after close: %v: want the close echoed", err)
	}
}

// Frames sent right behind the handshake (in the same packet) are not
// lost when the handshake reader is dropped.
func TestWebSocketDataWithHandshake(t *testing.T) {
	f := newFixture(t, Options{})
	nc, err := net.Dial("tcp", strings.TrimPrefix(f.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	req := "GET " + Path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + f.boot + "\r\n\r\n"
	data := append([]byte{0}, marshal(t, enrollMsg("eager"))...)
	frame := []byte{0x82, 0x80 | 126, byte(len(data) >> 8), byte(len(data)), 0, 0, 0, 0}
	if _, err := nc.Write(append([]byte(req), append(frame, data...)...)); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	got := ""
	for !strings.Contains(got, "\r\n\r\n") || len(got) < strings.Index(got, "\r\n\r\n")+8 {
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatalf("read %q: %v", got, err)
		}
		got += string(buf[:n])
	}
	if !strings.HasPrefix(got, "HTTP/1.1 101") {
		t.Fatalf("handshake answer %q", got)
	}
	if a, err := f.st.AgentByID(t.Context(), uidHex); err != nil || a.Hostname != "eager" {
		t.Fatalf("agent %+v, %v", a, err)
	}
}

// Refused handshakes get their status and Retry-After, before any upgrade.
func TestWebSocketRefusal(t *testing.T) {
	f := newFixture(t, Options{MaxConnections: 1})
	u := "ws" + strings.TrimPrefix(f.http.URL, "http") + Path
	_, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer nope"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %v, %v: want 401", err, resp)
	}
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("first"))
	readMsg(t, c)
	_, resp, err = websocket.DefaultDialer.Dial(u, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over capacity: %v, %+v: want 503 with Retry-After", err, resp)
	}
}

// Idle WebSockets hold no goroutine: 200 connected agents add none, and a
// push from the fleet still reaches each (the socket is armed again after
// every message).
func TestIdleWebSocketsHoldNoGoroutine(t *testing.T) {
	f := newFixture(t, Options{})
	sendMsg(t, dialWS(t, f, f.boot), enrollMsg("warm-up"))
	time.Sleep(200 * time.Millisecond)
	before := runtime.NumGoroutine()
	const n = 200
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialWS(t, f, f.boot)
		id := []byte("agent-" + strings.Repeat("0", 10))
		copy(id[6:], []byte{byte('a' + i%26), byte('a' + i/26%26), byte('a' + i/676)})
		sendMsg(t, conns[i], &protobufs.AgentToServer{InstanceUid: id, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd"})})
		readMsg(t, conns[i])
	}
	deadline := time.Now().Add(10 * time.Second)
	var now int
	for time.Now().Before(deadline) {
		if now = runtime.NumGoroutine(); now-before < n/10 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now-before >= n/10 {
		t.Fatalf("%d goroutines for %d idle WebSockets (was %d): want about none", now-before, n, before)
	}
	for i := range conns {
		id := []byte("agent-" + strings.Repeat("0", 10))
		copy(id[6:], []byte{byte('a' + i%26), byte('a' + i/26%26), byte('a' + i/676)})
		if err := f.srv.Send(context.Background(), hexID(id), &protobufs.ServerToAgent{Flags: 1}); err != nil {
			t.Fatal(err)
		}
		if out := readMsg(t, conns[i]); out.Flags != 1 {
			t.Fatalf("push %d: %v", i, out)
		}
	}
}

func hexID(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// Disconnect of an idle connection (revocation, a newer connection of the
// same agent) records the agent disconnected although no read is pending.
func TestDisconnectIdleWebSocket(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("idle"))
	readMsg(t, c)
	f.srv.Shutdown()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("connection still open after shutdown")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, err := f.st.AgentByID(t.Context(), uidHex)
		if err == nil && !a.Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %+v, %v: want disconnected", a, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FuzzWebSocketFrames feeds arbitrary bytes to the server as the frames of
// an accepted WebSocket: nothing may crash or hang the server, and it
// still serves a good agent afterwards.
func FuzzWebSocketFrames(f *testing.F) {
	fx := newFixture(f, Options{MaxMessageBytes: 64 << 10})
	msg := append([]byte{0}, marshal(f, enrollMsg("fuzz"))...)
	frame := func(b0 byte, p []byte) []byte {
		out := []byte{b0, 0x80 | byte(len(p)), 0, 0, 0, 0}
		return append(out, p...)
	}
	f.Add(frame(0x82, msg))
	f.Add(append(frame(0x02, msg[:5]), frame(0x80, msg[5:])...))
	f.Add(frame(0x89, []byte("ping")))
	f.Add(frame(0x88, []byte{0x03, 0xe8}))
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0x01, 0x00})
	f.Add(frame(0x81, []byte("text")))
	addr := strings.TrimPrefix(fx.http.URL, "http://")
	req := "GET " + Path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + fx.boot + "\r\n\r\n"
	f.Fuzz(func(t *testing.T, data []byte) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// The server may answer (pongs) faster than this reader reads:
		// bound the write too.
		_ = nc.SetDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := nc.Write(append([]byte(req), data...)); err != nil {
			return // the server may hang up first
		}
		_ = nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 1024)
		for {
			if _, err := nc.Read(buf); err != nil {
				break
			}
		}
	})
	// The server still takes a good agent.
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+Path, http.Header{"Authorization": {"Bearer " + fx.boot}})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
}
