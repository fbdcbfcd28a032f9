package opamp

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// handshakeRequest is an agent's WebSocket handshake with tok.
func handshakeRequest(tok string) string {
	return "GET " + Path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
}

// TestListenTakesWebSocketHandshakes: on the listener Listen returns, an
// agent's WebSocket handshake is read and upgraded by the poller (not
// net/http), its socket set up from the listening socket's options; over
// TLS net/http reads it.
func TestListenTakesWebSocketHandshakes(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registerer: reg})
	c := dialWS(t, f, f.boot)
	sendMsg(t, c, enrollMsg("taken"))
	readMsg(t, c)
	if n := counterVec(t, reg, "fleetprof_opamp_websocket_handshakes_total", "poller"); n != 1 {
		t.Fatalf("handshakes read by the poller: %v; want 1", n)
	}
	w := wsConnOf(t, f, uidHex)
	w.fdMu.RLock()
	nodelay, err := unix.GetsockoptInt(w.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	w.fdMu.RUnlock()
	if err != nil || nodelay == 0 {
		t.Fatalf("TCP_NODELAY %d, %v: want it inherited from the listening socket", nodelay, err)
	}

	// TLS: net/http reads the handshake.
	mux := http.NewServeMux()
	mux.Handle(Path, f.srv.Handler())
	hs := httptest.NewUnstartedServer(mux)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	tc, _, err := d.Dial("wss"+strings.TrimPrefix(hs.URL, "https")+Path, http.Header{"Authorization": {"Bearer " + f.boot}})
	if err != nil {
		t.Fatal(err)
	}
	tc.Close()
	if n := counterVec(t, reg, "fleetprof_opamp_websocket_handshakes_total", "net_http"); n != 1 {
		t.Fatalf("handshakes read by net/http: %v; want 1 (the TLS one)", n)
	}
}

// TestListenHandsOtherRequestsToNetHTTP: everything that is not an OpAMP
// WebSocket handshake reaches net/http with the bytes the poller read of
// it: another path (here answered 404 by the mux), a path that only
// starts like OpAMP's, and a request that comes one byte at a time.
func TestListenHandsOtherRequestsToNetHTTP(t *testing.T) {
	f := newFixture(t, Options{})
	addr := strings.TrimPrefix(f.http.URL, "http://")
	for _, tc := range []struct {
		name, req string
		trickle   bool
		want      string
	}{
		{"other path", "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", false, "HTTP/1.1 404"},
		{"longer path", "GET " + Path + "x HTTP/1.1\r\nHost: x\r\n\r\n", false, "HTTP/1.1 404"},
		{"post, one byte at a time", "POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", true, "HTTP/1.1 404"},
		{"handshake, one byte at a time", handshakeRequest(f.boot), true, "HTTP/1.1 101"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if tc.trickle {
				for i := range len(tc.req) {
					if _, err := nc.Write([]byte{tc.req[i]}); err != nil {
						t.Fatal(err)
					}
					if i%16 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			} else if _, err := io.WriteString(nc, tc.req); err != nil {
				t.Fatal(err)
			}
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(nc).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, tc.want) {
				t.Fatalf("answer %q, %v; want %s", line, err, tc.want)
			}
		})
	}
}

// TestListenRequestTimesOut: a connection that does not complete its
// request in time is closed (no goroutine waits on it meanwhile).
func TestListenRequestTimesOut(t *testing.T) {
	old := handshakeTimeout
	handshakeTimeout = 300 * time.Millisecond
	t.Cleanup(func() { handshakeTimeout = old })
	f := newFixture(t, Options{})
	addr := strings.TrimPrefix(f.http.URL, "http://")
	for _, sent := range []string{"", "GET " + Path + " HTTP/1.1\r\nHost: x\r\n"} {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, err := io.WriteString(nc, sent); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := nc.Read(make([]byte, 64))
		if err != io.EOF {
			t.Fatalf("after %q: read %d bytes, %v; want the connection closed", sent, n, err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Fatalf("after %q: closed after %v, before the timeout", sent, d)
		}
	}
}
