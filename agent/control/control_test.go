package control

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/gorilla/websocket"
)

// A failed connection is checked with the fleet (is the token refused?)
// only when the fleet answered the handshake; when it did not answer (down,
// restarting), asking would only add a token verification per agent to
// the reconnect storm that follows a fleet restart.
func TestConnectFailureChecksOnlyRefusals(t *testing.T) {
	var checks atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	c, err := New(Options{FleetURL: srv.URL, BootstrapToken: "boot", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	failed := c.onConnectFailed("boot")
	failed(t.Context(), &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	if n := checks.Load(); n != 0 {
		t.Fatalf("%d checks after a refused TCP connection, want 0", n)
	}
	if st := c.Status(); st.Connected || st.LastError == "" {
		t.Errorf("status %+v: want disconnected with the error", st)
	}
	failed(t.Context(), websocket.ErrBadHandshake)
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d checks after a refused handshake, want 1", n)
	}
	if st := c.Status(); st.LastError != "bootstrap token rejected" {
		t.Errorf("after a 401: last error %q, want the bootstrap token rejected", st.LastError)
	}
}
