package opamp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/open-telemetry/opamp-go/server/types"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Taking agents' WebSocket handshakes without net/http.
//
// Through net/http a handshake cost a goroutine with its read and write
// buffers, a parsed request with its header map, five socket options set
// on the accepted socket and the dance that takes the socket back out of
// the Go runtime (detach): the fleet's largest cost in a reconnect storm
// after the handshakes' own system calls. With Listen the poller accepts
// the connections itself (non-blocking accept4 on its own descriptor of
// the listening socket, in its epoll set), reads each request's bytes,
// and a request that is an OpAMP WebSocket handshake (GET Path) is
// upgraded here: its headers parsed by gobwas/ws's Upgrader from the bytes
// read, the answer written with one write, and the socket, already
// non-blocking and in the set, goes on as the agent's WebSocket. Any other
// request (the console, the API, profile uploads, OpAMP over plain HTTP,
// HTTP/2) is handed to net/http with the bytes read so far, on the
// listener Listen returns. The accepted sockets inherit their options
// (TCP_NODELAY, keep-alive) from the listening socket.

// listenKey is the listening socket's key in the epoll set.
const listenKey = ^uint64(0)

// maxAccepts bounds the connections accepted in one round, so a storm of
// handshakes cannot starve the reads of connected agents.
const maxAccepts = 512

// maxRequestBytes bounds a WebSocket handshake's request (net/http's
// MaxHeaderBytes in the fleet); a longer one goes to net/http, which
// answers 431.
const maxRequestBytes = 64 << 10

// handshakeWorkers is how many goroutines upgrade the handshakes the
// poller read. A goroutine per handshake grew a new stack for each (7% of
// the fleet's CPU in a reconnect storm of 19,000 agents) and filled the
// run queues ahead of the poller; a few long-lived ones keep their grown
// stacks. More than the cores: a handshake may wait for the start's
// listing of recorded credentials, or for the store.
const handshakeWorkers = 16

// handshakeTimeout bounds the time from accept to a complete request.
// (A variable for the tests.)
var handshakeTimeout = 10 * time.Second

var opampGet = []byte("GET " + Path)

// Listen returns the listener for the http.Server that serves the fleet
// on ln: the OpAMP WebSocket handshakes that arrive on ln are taken here
// (see the top of this file), everything else is accepted through it. It
// returns ln itself where the poller cannot take sockets (no epoll, not a
// TCP listener, or a listener taken before: the poller takes one); TLS
// listeners must not be passed.
func (s *Server) Listen(ln net.Listener) net.Listener {
	p := s.poll
	tl, ok := ln.(*net.TCPListener)
	p.lmu.RLock()
	taken := p.ls != nil
	p.lmu.RUnlock()
	if !ok || p.epfd < 0 || taken {
		return ln
	}
	raw, err := tl.SyscallConn()
	if err != nil {
		return ln
	}
	fd := -1
	var derr error
	if err := raw.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		s.log.Warn("websocket handshakes go through net/http", zap.Error(errors.Join(err, derr)))
		return ln
	}
	// Accepted sockets inherit these. Go sets TCP_NODELAY and 15 s
	// keep-alive probes on each socket it accepts; an agent's heartbeats
	// prove it alive more often than probes would before twice its
	// interval.
	idle := max(int(2*s.o.HeartbeatInterval/time.Second), 15)
	for _, o := range []struct{ level, opt, v int }{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, idle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			s.log.Warn("set listening socket option", zap.Int("option", o.opt), zap.Error(err))
		}
	}
	h := &handoff{Listener: ln, p: p, conns: make(chan net.Conn), done: make(chan struct{})}
	p.lmu.Lock()
	p.lfd, p.ls, p.handoff = fd, s, h
	p.lmu.Unlock()
	for range handshakeWorkers {
		go p.upgrader()
	}
	if err := p.armListener(); err != nil {
		s.log.Warn("websocket handshakes go through net/http", zap.Error(err))
		p.unlisten()
		return ln
	}
	return h
}

// handoff is the listener net/http serves: the connections the poller
// accepted that are not OpAMP WebSocket handshakes.
type handoff struct {
	net.Listener // the listening socket (Addr, Close)
	p            *poller
	conns        chan net.Conn
	done         chan struct{}
	once         sync.Once
}

// Accept returns the next connection for net/http.
func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and closes the listening socket.
func (h *handoff) Close() error {
	h.once.Do(func() {
		close(h.done)
		h.p.unlisten()
	})
	return h.Listener.Close()
}

// deliver passes c to net/http (or closes it once the listener is closed).
func (h *handoff) deliver(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.done:
		_ = c.Close()
	}
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite shuts the connection's writing side (net/http uses it to
// close gracefully).
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// armListener (re-)arms the listening socket, one-shot: the poller
// accepts in its rounds and re-arms it after.
func (p *poller) armListener() error {
	p.lmu.RLock()
	defer p.lmu.RUnlock()
	if p.lfd < 0 {
		return nil
	}
	if err := epollArm(p.epfd, p.lfd, unix.EPOLLIN|unix.EPOLLONESHOT, listenKey); err != nil {
		return fmt.Errorf("epoll_ctl listening socket: %w", err)
	}
	return nil
}

// unlisten stops accepting: the poller's descriptor of the listening
// socket is closed (which takes it out of the set).
func (p *poller) unlisten() {
	p.lmu.Lock()
	defer p.lmu.Unlock()
	if p.lfd >= 0 {
		_ = unix.Close(p.lfd)
		p.lfd = -1
	}
}

// acceptAll accepts the waiting connections (up to maxAccepts) into the
// set, each waiting for its request, and re-arms the listening socket. It
// reports whether it accepted any.
func (p *poller) acceptAll() bool {
	p.lmu.RLock()
	s := p.ls
	var got []*wsConn
	pause := false
	for range maxAccepts {
		if p.lfd < 0 {
			break
		}
		nfd, sa, err := unix.Accept4(p.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				continue
			case errors.Is(err, unix.EAGAIN):
			default:
				// Out of descriptors (EMFILE) or memory: waiting
				// connections stay in the kernel's queue a moment.
				s.log.Warn("accept", zap.Error(err))
				pause = true
			}
			break
		}
		got = append(got, &wsConn{s: s, fd: nfd, hs: true, remote: sockaddrString(sa)})
	}
	p.lmu.RUnlock()
	deadline := time.Now().Add(handshakeTimeout)
	for _, w := range got {
		p.mu.Lock()
		p.next++
		w.key = p.next
		p.conns[w.key] = w
		w.partial = true
		p.partial[w] = deadline
		p.mu.Unlock()
		if err := p.arm(w); err != nil {
			p.log.Warn("register connection", zap.Error(err))
			_ = w.close(true)
		}
	}
	if pause {
		time.AfterFunc(50*time.Millisecond, func() { _ = p.armListener() })
	} else if err := p.armListener(); err != nil {
		p.log.Error("re-arm listening socket: no more connections are accepted", zap.Error(err))
	}
	return len(got) > 0
}

// sockaddrString formats a peer's address as net.Addr's String does.
func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return ""
}

// readRequest reads what arrived of a new connection's request and acts
// once it can tell what it is: an OpAMP WebSocket handshake is upgraded
// (upgrade), anything else handed to net/http; a request still coming is
// read again when more arrives.
func (p *poller) readRequest(w *wsConn, scratch []byte) {
	for {
		n, err := readRaw(w, scratch)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil || n == 0 {
			_ = w.close(true) // gone before it asked anything
			return
		}
		w.in = append(w.in, scratch[:n]...)
		if n < len(scratch) {
			break
		}
		if len(w.in) > maxRequestBytes {
			break
		}
	}
	b := w.in
	end := bytes.Index(b, []byte("\r\n\r\n"))
	switch {
	case !bytes.HasPrefix(b, opampGet[:min(len(b), len(opampGet))]),
		len(b) > len(opampGet) && b[len(opampGet)] != ' ' && b[len(opampGet)] != '?',
		len(b) > maxRequestBytes,
		end >= 0 && !upgradesToWebSocket(b[:end]):
		// (A GET of the OpAMP path that asks for no WebSocket is
		// net/http's, as before: opamp-go's plain-HTTP transport
		// answers it, 401 for a bad token.)
		go p.handOff(w)
	case end >= 0:
		select {
		case p.requests <- w:
		default: // a storm beyond the queue: a goroutine of its own
			go w.s.upgrade(w)
		}
	default:
		if err := p.arm(w); err != nil {
			_ = w.close(true)
		}
	}
}

// upgrader upgrades the handshakes queued by readRequest until the
// poller stops.
func (p *poller) upgrader() {
	for {
		select {
		case w := <-p.requests:
			w.s.upgrade(w)
		case <-p.done:
			return
		}
	}
}

// upgradesToWebSocket reports whether a request's header block asks for
// a WebSocket (an Upgrade header naming websocket).
func upgradesToWebSocket(hdr []byte) bool {
	for line := range bytes.SplitSeq(hdr, []byte("\r\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("Upgrade")) && bytes.EqualFold(bytes.TrimSpace(v), []byte("websocket")) {
			return true
		}
	}
	return false
}

// handOff gives a connection that is not an OpAMP WebSocket handshake to
// net/http, with the bytes read from it.
func (p *poller) handOff(w *wsConn) {
	p.remove(w)
	p.lmu.RLock()
	h := p.handoff
	p.lmu.RUnlock()
	w.fdMu.Lock()
	fd := w.fd
	w.fd = -1
	w.fdMu.Unlock()
	w.closed.Store(true)
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		p.log.Warn("hand a connection to net/http", zap.Error(err))
		return
	}
	h.deliver(&prefixConn{Conn: nc, pre: w.in})
}

// upgrade answers an OpAMP WebSocket handshake whose request w.in holds
// (and perhaps the first frames after it): accepted, the connection goes
// on as the agent's WebSocket; refused, the answer says why and the
// connection is closed.
func (s *Server) upgrade(w *wsConn) {
	p := s.poll
	end := bytes.Index(w.in, []byte("\r\n\r\n")) + 4
	var r request
	r.remote = w.remote
	// sc is the connection's state once accepted, cb its callbacks.
	var sc *conn
	var cb types.ConnectionCallbacks
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			if path, _, _ := bytes.Cut(uri, []byte("?")); string(path) != Path {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("not found"))
			}
			return nil
		},
		OnHeader: func(k, v []byte) error {
			switch {
			case bytes.EqualFold(k, []byte("Authorization")):
				r.authorization = string(v)
			case bytes.EqualFold(k, []byte("Content-Type")):
				r.contentType = string(v)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			cr, c := s.accept(ctx, r)
			if !cr.Accept {
				hdr := http.Header{}
				for k, v := range cr.HTTPResponseHeader {
					hdr.Set(k, v)
				}
				return nil, ws.RejectConnectionError(ws.RejectionStatus(cr.HTTPStatusCode), ws.RejectionHeader(ws.HandshakeHeaderHTTP(hdr)),
					ws.RejectionReason(http.StatusText(cr.HTTPStatusCode)))
			}
			sc, cb = c, cr.ConnectionCallbacks
			return ws.HandshakeHeaderString(""), nil
		},
	}
	var out bytes.Buffer
	_, uerr := u.Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(w.in[:end]), &out})
	w.fdMu.RLock()
	fd := w.fd
	var werr error
	if fd >= 0 {
		werr = sendRaw(ctx, fd, out.Bytes(), s.o.WriteTimeout)
	}
	w.fdMu.RUnlock()
	if uerr != nil || werr != nil || sc == nil || fd < 0 {
		if sc != nil {
			s.log.Debug("websocket upgrade", zap.String("remote", w.remote), zap.Error(errors.Join(uerr, werr)))
		}
		_ = w.close(true)
		return
	}
	s.m.handshakes.WithLabelValues("poller").Inc()
	// A client may send its first frames right behind the handshake.
	if rest := w.in[end:]; len(rest) > 0 {
		w.in = append([]byte(nil), rest...)
	} else {
		w.in = nil
	}
	// Under mu: a close (Shutdown's) reads onClose there.
	p.mu.Lock()
	w.hs, w.partial, w.remote = false, false, ""
	delete(p.partial, w)
	w.onMessage, w.onClose, w.heartbeat = cb.OnMessage, cb.OnConnectionClose, sc.heartbeat
	p.mu.Unlock()
	cb.OnConnected(ctx, w)
	if len(w.in) > 0 {
		p.first(w)
		return
	}
	if err := p.arm(w); err != nil {
		p.log.Warn("register websocket", zap.Error(err))
		_ = w.close(true)
	}
}
