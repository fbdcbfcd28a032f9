package opamp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/fleetprof/fleetprof/internal/describe"
)

const uidHex = "30313233343536373839616263646566"

func dialWS(t *testing.T, f *fixture, tok string) *websocket.Conn {
	t.Helper()
	return dialTo(t, f.http.URL, tok)
}

// dialTo dials the OpAMP WebSocket of the server at url with tok.
func dialTo(t *testing.T, url, tok string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(url, "http") + Path
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

// enrolled enrolls the test agent over a WebSocket with the bootstrap
// token and returns the credential the fleet offered it.
func enrolled(t *testing.T, f *fixture, host string) string {
	t.Helper()
	c := dialWS(t, f, f.boot)
	defer c.Close()
	sendMsg(t, c, enrollMsg(host))
	return strings.TrimPrefix(readMsg(t, c).GetConnectionSettings().GetOpamp().GetHeaders().GetHeaders()[0].GetValue(), "Bearer ")
}

// handshakeRequest is an agent's WebSocket handshake with tok, as bytes
// on the wire.
func handshakeRequest(tok string) string {
	return "GET " + Path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
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
	req := handshakeRequest(f.boot)
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
	req := handshakeRequest(fx.boot)
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

// wsConnOf returns the server side of the live WebSocket of an agent.
func wsConnOf(t *testing.T, f *fixture, agent string) *wsConn {
	t.Helper()
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	c := f.srv.conns[agent]
	if c == nil {
		t.Fatalf("agent %s not connected", agent)
	}
	w, ok := c.c.(*wsConn)
	if !ok {
		t.Fatalf("connection of %s is a %T", agent, c.c)
	}
	return w
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A frame that arrives in pieces (here byte by byte, the first bytes
// together with the handshake) is assembled across reads, with a ping in
// the middle of the message; nothing is answered before it is complete.
func TestWebSocketFrameInPieces(t *testing.T) {
	f := newFixture(t, Options{})
	nc, err := net.Dial("tcp", strings.TrimPrefix(f.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	data := append([]byte{0}, marshal(t, enrollMsg(strings.Repeat("p", 300)))...)
	half := len(data) / 2
	var stream []byte
	stream = append(stream, maskedFrame(false, 0x2, data[:half])...)
	stream = append(stream, maskedFrame(true, 0x9, []byte("mid"))...)
	stream = append(stream, maskedFrame(true, 0x0, data[half:])...)
	req := handshakeRequest(f.boot)
	if _, err := nc.Write(append([]byte(req), stream[:3]...)); err != nil {
		t.Fatal(err)
	}
	for i := 3; i < len(stream); i++ {
		if i%40 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
		if _, err := nc.Write(stream[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v, %v", resp, err)
	}
	// The pong comes first, then the answer to the message.
	op, p := readServerFrame(t, br)
	if op != 0xa || string(p) != "mid" {
		t.Fatalf("first frame op %#x %q: want the pong", op, p)
	}
	op, p = readServerFrame(t, br)
	out := &protobufs.ServerToAgent{}
	if op != 0x2 || len(p) == 0 || proto.Unmarshal(p[1:], out) != nil || out.GetConnectionSettings() == nil {
		t.Fatalf("second frame op %#x, %d bytes: want the credential offer", op, len(p))
	}
	if a, err := f.st.AgentByID(t.Context(), uidHex); err != nil || a.Hostname != strings.Repeat("p", 300) {
		t.Fatalf("agent %+v, %v", a, err)
	}
}

// maskedFrame encodes one client frame.
func maskedFrame(fin bool, op byte, p []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch {
	case len(p) < 126:
		out = append(out, 0x80|byte(len(p)))
	case len(p) < 1<<16:
		out = append(out, 0x80|126, byte(len(p)>>8), byte(len(p)))
	default:
		out = append(out, 0x80|127, 0, 0, 0, 0, byte(len(p)>>24), byte(len(p)>>16), byte(len(p)>>8), byte(len(p)))
	}
	mask := []byte{9, 8, 7, 6}
	out = append(out, mask...)
	for i := range p {
		out = append(out, p[i]^mask[i%4])
	}
	return out
}

// readServerFrame reads one unmasked frame the server sent.
func readServerFrame(t *testing.T, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			t.Fatal(err)
		}
		n = int(l[0])<<8 | int(l[1])
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			t.Fatal(err)
		}
		n = int(l[4])<<24 | int(l[5])<<16 | int(l[6])<<8 | int(l[7])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	return h[0] & 0x0f, p
}

// A push to an agent that does not read gives up after the write
// timeout and closes the connection; pushes to the others go on.
func TestWebSocketStuckAgentWriteTimesOut(t *testing.T) {
	f := newFixture(t, Options{WriteTimeout: 300 * time.Millisecond})
	stuck := dialWS(t, f, f.boot)
	sendMsg(t, stuck, enrollMsg("stuck"))
	readMsg(t, stuck)
	other := dialWS(t, f, f.boot)
	otherUID := []byte("fedcba9876543210")
	sendMsg(t, other, &protobufs.AgentToServer{InstanceUid: otherUID, AgentDescription: describe.Encode(describe.Agent{Platform: "systemd"})})
	readMsg(t, other)
	big := &protobufs.ServerToAgent{CustomMessage: &protobufs.CustomMessage{Capability: "x", Type: "y", Data: make([]byte, 256<<10)}}
	var err error
	start := time.Now()
	for i := 0; i < 200 && err == nil; i++ {
		err = f.srv.Send(t.Context(), uidHex, big)
	}
	if err == nil {
		t.Fatal("200 pushes of 256 KiB to an agent that does not read: want a write timeout")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the push gave up after %v", d)
	}
	waitFor(t, "the stuck agent disconnected", func() bool { return !f.srv.isLive(uidHex) })
	if err := f.srv.Send(t.Context(), hexID(otherUID), &protobufs.ServerToAgent{Flags: 1}); err != nil {
		t.Fatal(err)
	}
	if out := readMsg(t, other); out.Flags != 1 {
		t.Fatalf("push to the other agent: %v", out)
	}
}

// Concurrent pushes to one agent while it talks are written whole, one
// frame after the other.
func TestWebSocketConcurrentPushes(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("busy"))
	readMsg(t, c)
	const n = 40
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- f.srv.Send(context.Background(), uidHex, &protobufs.ServerToAgent{Flags: 1, CustomMessage: &protobufs.CustomMessage{Data: make([]byte, 1000*i)}})
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		if out := readMsg(t, c); out.Flags != 1 {
			t.Fatalf("push: %v", out)
		}
	}
}

// TLS WebSockets keep a goroutine each and serve the same protocol.
func TestWebSocketOverTLS(t *testing.T) {
	f := newFixture(t, Options{})
	mux := http.NewServeMux()
	mux.Handle(Path, f.srv.Handler())
	hs := httptest.NewUnstartedServer(mux)
	hs.Config.ConnContext = f.srv.ConnContext
	hs.StartTLS()
	t.Cleanup(hs.Close)
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	c, _, err := d.Dial("wss"+strings.TrimPrefix(hs.URL, "https")+Path, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pong := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pong <- s; return nil })
	data := append([]byte{0}, marshal(t, enrollMsg("tls"))...)
	half := len(data) / 2
	if err := c.WriteMessage(websocket.PingMessage, []byte("tls ping")); err != nil {
		t.Fatal(err)
	}
	nw, err := c.NextWriter(websocket.BinaryMessage)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = nw.Write(data[:half])
	_, _ = nw.Write(data[half:])
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	if out := readMsg(t, c); out.GetConnectionSettings() == nil {
		t.Fatalf("reply %v", out)
	}
	if s := <-pong; s != "tls ping" {
		t.Fatalf("pong %q", s)
	}
	w := wsConnOf(t, f, uidHex)
	if _, ok := w.Connection().(*tls.Conn); !ok || w.fd >= 0 {
		t.Fatalf("connection %T, descriptor %d: want the TLS connection, served by a goroutine", w.Connection(), w.fd)
	}
	if err := f.srv.Send(t.Context(), uidHex, &protobufs.ServerToAgent{Flags: 1}); err != nil {
		t.Fatal(err)
	}
	if out := readMsg(t, c); out.Flags != 1 {
		t.Fatalf("push %v", out)
	}
}

// An agent on its own credential: bare heartbeats in sequence are counted
// and not answered (the poller takes them itself); a gap in the sequence
// is answered with a request for the full state, and a status change is
// stored.
func TestWebSocketHeartbeats(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registerer: reg})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("beating"))
	out := readMsg(t, c)
	cred := strings.TrimPrefix(out.GetConnectionSettings().GetOpamp().GetHeaders().GetHeaders()[0].GetValue(), "Bearer ")
	c.Close()
	a := dialWS(t, f, cred)
	sendMsg(t, a, enrollMsg("beating"))
	readMsg(t, a)
	messages := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "fleetprof_opamp_messages_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}
	before := messages()
	for seq := uint64(1); seq <= 5; seq++ {
		sendMsg(t, a, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: seq})
	}
	waitFor(t, "5 heartbeats counted", func() bool { return messages() == before+5 })
	_ = a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, _, err := a.ReadMessage(); err == nil {
		t.Fatal("a bare heartbeat was answered")
	}
	a.Close()
	b := dialWS(t, f, cred)
	sendMsg(t, b, enrollMsg("beating"))
	readMsg(t, b)
	sendMsg(t, b, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 1})
	sendMsg(t, b, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 7})
	if out := readMsg(t, b); out.Flags&uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState) == 0 {
		t.Fatalf("reply to a sequence gap %v: want ReportFullState", out)
	}
	sendMsg(t, b, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 8, Health: &protobufs.ComponentHealth{Healthy: true, Status: "fine"}})
	waitFor(t, "the health stored", func() bool {
		ag, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && ag.Health == "fine"
	})
}

// However the network cuts the bytes of a stream, the parser yields the
// same items as from the whole stream, and keeps no bytes between frames.
func TestIngestAnySplit(t *testing.T) {
	m1 := append([]byte{0}, marshal(t, enrollMsg(strings.Repeat("a", 200)))...)
	m2 := append([]byte{0}, marshal(t, &protobufs.AgentToServer{InstanceUid: uid, SequenceNum: 2})...)
	var stream []byte
	stream = append(stream, maskedFrame(true, 0x2, m1)...)
	stream = append(stream, maskedFrame(true, 0x1, []byte("text is dropped"))...)
	stream = append(stream, maskedFrame(false, 0x2, m2[:3])...)
	stream = append(stream, maskedFrame(true, 0x9, []byte("ping"))...)
	stream = append(stream, maskedFrame(true, 0xa, []byte("pong"))...)
	stream = append(stream, maskedFrame(true, 0x0, m2[3:])...)
	stream = append(stream, maskedFrame(true, 0x8, []byte{0x03, 0xe9})...)
	stream = append(stream, maskedFrame(true, 0x2, m2)...) // after the close: not parsed
	newConn := func() *wsConn {
		return &wsConn{s: &Server{o: Options{MaxMessageBytes: 1 << 20}, log: zap.NewNop()}, fd: -1}
	}
	summary := func(items []inbound) []string {
		var out []string
		for _, it := range items {
			switch it.kind {
			case kindMessage:
				out = append(out, fmt.Sprintf("message %d %v", it.msg.SequenceNum, it.msg.AgentDescription != nil))
			case kindPing:
				out = append(out, "ping "+string(it.data))
			case kindClose:
				out = append(out, fmt.Sprintf("close %d", it.code))
			default:
				out = append(out, fmt.Sprintf("kind %d", it.kind))
			}
		}
		return out
	}
	want := []string{"message 0 true", "ping ping", "message 2 false", "close 1001"}
	if got := summary(newConn().ingest(append([]byte(nil), stream...), nil)); !cmp.Equal(got, want) {
		t.Fatalf("whole stream: %s", cmp.Diff(want, got))
	}
	for cut := 1; cut < len(stream); cut++ {
		for _, second := range []int{cut, min(cut+7, len(stream))} {
			w := newConn()
			var items []inbound
			items = w.ingest(append([]byte(nil), stream[:cut]...), items)
			items = w.ingest(append([]byte(nil), stream[cut:second]...), items)
			items = w.ingest(append([]byte(nil), stream[second:]...), items)
			if got := summary(items); !cmp.Equal(got, want) {
				t.Fatalf("cut at %d and %d: %s", cut, second, cmp.Diff(want, got))
			}
		}
	}
	w := newConn()
	w.ingest(append([]byte(nil), stream[:len(maskedFrame(true, 0x2, m1))+5]...), nil)
	if !w.pending() {
		t.Fatal("part of a frame received: want it pending")
	}
	if w2 := newConn(); len(w2.ingest(maskedFrame(true, 0x2, m2), nil)) != 1 || w2.pending() || w2.in != nil {
		t.Fatal("a whole frame left bytes behind")
	}
}
