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
	// (Counted once the answer is written: the client may read it first.)
	waitFor(t, "the TLS handshake counted as net/http's", func() bool {
		return counterVec(t, reg, "fleetprof_opamp_websocket_handshakes_total", "net_http") == 1
	})
	if n := counterVec(t, reg, "fleetprof_opamp_websocket_handshakes_total", "poller"); n != 1 {
		t.Fatalf("handshakes read by the poller: %v; want the first one only", n)
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
		// No Upgrade: opamp-go's plain-HTTP transport refuses the token.
		{"opamp path, no upgrade", "GET " + Path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n", false, "HTTP/1.1 401"},
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

// TestListenHandsHTTP2ToNetHTTP: a plaintext HTTP/2 connection (prior
// knowledge, as the agent's gRPC profile upload speaks to a plaintext
// fleet) reaches net/http through the handoff.
func TestListenHandsHTTP2ToNetHTTP(t *testing.T) {
	f := newFixture(t, Options{})
	srv, err := New(Options{Store: f.st, Auth: f.auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	mux := http.NewServeMux()
	mux.Handle(Path, srv.Handler())
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Proto) })
	hs := httptest.NewUnstartedServer(mux)
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Listener = srv.Listen(hs.Listener)
	hs.Start()
	t.Cleanup(hs.Close)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	cl := &http.Client{Transport: &http.Transport{Protocols: &h2c}}
	resp, err := cl.Get(hs.URL + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "HTTP/2.0" {
		t.Fatalf("h2c answer %d %q; want 200 from net/http over HTTP/2.0", resp.StatusCode, b)
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

// FuzzHandshakeRequest sends arbitrary bytes as a new connection's
// request to the listener Listen returns: nothing may crash or hang the
// server; a request the poller takes as an OpAMP handshake (GET of the
// path, asking for a WebSocket) is answered with an HTTP/1.1 status (101
// or a refusal) or closed; and the server
// still takes a good agent afterwards.
func FuzzHandshakeRequest(f *testing.F) {
	fx := newFixture(f, Options{})
	addr := strings.TrimPrefix(fx.http.URL, "http://")
	f.Add([]byte(handshakeRequest(fx.boot)))
	f.Add([]byte(handshakeRequest("not-a-token")))
	f.Add([]byte(strings.Replace(handshakeRequest(fx.boot), Path, Path+"?a=b", 1)))
	f.Add([]byte(strings.Replace(handshakeRequest(fx.boot), "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 1)))
	f.Add([]byte("GET " + Path + " HTTP/1.1\r\nHost x\r\n\r\n"))
	f.Add([]byte("GET " + Path + " HTTP/1.0\r\n\r\n"))
	f.Add([]byte("GET " + Path))
	f.Add([]byte("POST " + Path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := nc.Write(data); err != nil {
			return // the server may hang up first
		}
		_ = nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, 16)
		n, _ := io.ReadFull(nc, buf)
		end := strings.Index(string(data), "\r\n\r\n")
		ours := (strings.HasPrefix(string(data), "GET "+Path+" ") || strings.HasPrefix(string(data), "GET "+Path+"?")) &&
			end >= 0 && end <= maxRequestBytes && upgradesToWebSocket(data[:end])
		if ours && n > 0 && !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 ") {
			t.Fatalf("answer to a handshake %q: %q; want an HTTP/1.1 status line", data, buf[:n])
		}
	})
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+Path, http.Header{"Authorization": {"Bearer " + fx.boot}})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
}
