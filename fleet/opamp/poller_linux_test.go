package opamp

import (
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

// A detached socket probes a silent agent only after two heartbeat
// intervals: the heartbeats prove it alive in between.
func TestDetachedSocketKeepAlive(t *testing.T) {
	f := newFixture(t, Options{HeartbeatInterval: 45 * time.Second})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("keepalive"))
	readMsg(t, c)
	w := wsConnOf(t, f, uidHex)
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	on, err := unix.GetsockoptInt(w.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := unix.GetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	if err != nil {
		t.Fatal(err)
	}
	if on == 0 || idle != 90 {
		t.Fatalf("keep-alive %d, idle %d s: want on, 90 s", on, idle)
	}
	fl, err := unix.FcntlInt(uintptr(w.fd), unix.F_GETFD, 0)
	if err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Fatalf("descriptor flags %#x, %v: want close-on-exec", fl, err)
	}
}

// A plain-TCP WebSocket is served from its own descriptor, outside the Go
// runtime: the connection keeps no net.Conn.
func TestWebSocketIsDetached(t *testing.T) {
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("detached"))
	readMsg(t, c)
	w := wsConnOf(t, f, uidHex)
	if w.Connection() != nil || w.fd < 0 {
		t.Fatalf("connection %v, descriptor %d: want no net.Conn and a descriptor of its own", w.Connection(), w.fd)
	}
}

// A client that starts a frame and never finishes it is cut off after
// the frame timeout.
func TestWebSocketStalledFrameTimesOut(t *testing.T) {
	old := frameTimeout
	frameTimeout = 300 * time.Millisecond
	t.Cleanup(func() { frameTimeout = old })
	f := newFixture(t, Options{})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("stalling"))
	readMsg(t, c)
	if _, err := c.NetConn().Write(maskedFrame(true, 0x2, make([]byte, 200))[:50]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("read a message: want the connection closed")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed after %v: before the frame timeout", d)
	}
	waitFor(t, "the agent recorded disconnected", func() bool {
		a, err := f.st.AgentByID(t.Context(), uidHex)
		return err == nil && !a.Connected
	})
}

// Many connections that end every which way leave no descriptor behind.
func TestWebSocketsLeakNoDescriptors(t *testing.T) {
	f := newFixture(t, Options{MaxMessageBytes: 1024})
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	settle := func() {
		waitFor(t, "no connection left", func() bool {
			f.srv.poll.mu.Lock()
			defer f.srv.poll.mu.Unlock()
			return len(f.srv.poll.conns) == 0
		})
	}
	// Warm up whatever the first connection sets up.
	w := dialWS(t, f, f.boot)
	sendMsg(t, w, enrollMsg("warm"))
	readMsg(t, w)
	w.Close()
	settle()
	http.DefaultClient.CloseIdleConnections()
	before := count()
	for i := range 150 {
		c := dialWS(t, f, f.boot)
		switch i % 5 {
		case 0: // the agent hangs up
		case 1: // the agent says goodbye
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, _ = c.ReadMessage()
		case 2: // a protocol error
			writeRaw(t, c.NetConn(), true, 0x2, make([]byte, 2000))
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, _ = c.ReadMessage()
		case 3: // the fleet hangs up (a newer connection of the same agent takes over)
			sendMsg(t, c, enrollMsg("leak"))
			readMsg(t, c)
		case 4: // half a frame, then gone
			_, _ = c.NetConn().Write(maskedFrame(true, 0x2, make([]byte, 100))[:20])
		}
		c.Close()
	}
	// The last agent's connection is open until the fleet closes it.
	for _, id := range f.srv.Connected() {
		f.srv.mu.Lock()
		cc := f.srv.conns[id]
		f.srv.mu.Unlock()
		if cc != nil && cc.c != nil {
			_ = cc.c.Disconnect()
		}
	}
	settle()
	http.DefaultClient.CloseIdleConnections()
	var after int
	waitFor(t, "descriptors back to where they were", func() bool { after = count(); return after <= before })
	if after > before {
		t.Fatalf("%d descriptors after 150 connections, %d before", after, before)
	}
}
