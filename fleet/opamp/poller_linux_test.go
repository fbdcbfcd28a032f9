package opamp

import (
	"testing"
	"time"

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
