package opamp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/open-telemetry/opamp-go/server/types"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// poller waits for readable WebSockets in one epoll set and reads them.
//
// A plain-TCP WebSocket leaves the Go runtime's poller after the
// handshake (detach): its duplicated descriptor, non-blocking, is only in
// this set, so a heartbeat wakes the process once. One goroutine (run)
// blocks in epoll_wait on the set. Sockets are armed one-shot: it reads a
// ready socket with its one buffer until it would block, and only the
// goroutine that acts on what was read re-arms it, so a connection is
// never read by two goroutines at once and an idle one costs no goroutine
// and no buffer. After a round of events run sleeps a moment (gather),
// and the heartbeats that arrive meanwhile wake nobody: the next round
// serves them all. An idle fleet's heartbeats come one at a time, and a
// wake-up costs more than the read it serves.
type poller struct {
	log  *zap.Logger
	epfd int // -1: epoll unavailable, one goroutine per connection instead
	// wake is an eventfd in the set (under key 0) that stop writes to.
	wake int

	mu    sync.Mutex
	conns map[uint64]*wsConn
	// partial holds the connections that must complete a frame or
	// their request, by when.
	partial map[*wsConn]time.Time
	next    uint64
	stopped bool
	done    chan struct{}

	// The listening socket, when the poller accepts (Server.Listen):
	// its descriptor (-1: none), the server the connections are for,
	// and the listener of those that go to net/http.
	lmu     sync.RWMutex
	lfd     int
	ls      *Server
	handoff *handoff
	// requests holds the connections whose request is read, for the
	// upgraders.
	requests chan *wsConn
}

const (
	pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT
	// maxEvents is the most events one round serves.
	maxEvents = 512
	// gather is the pause after a round that was not full: messages wait
	// at most this long, and rounds are at most 1/gather a second while
	// the agents are idle.
	gather = 20 * time.Millisecond
	// readsPerEvent bounds the reads of one socket in one round (256 KiB),
	// so one busy agent cannot starve the others.
	readsPerEvent = 64
)

func newPoller(log *zap.Logger) *poller {
	p := &poller{log: log, epfd: -1, wake: -1, lfd: -1, requests: make(chan *wsConn, 4096), conns: map[uint64]*wsConn{}, partial: map[*wsConn]time.Time{}, done: make(chan struct{})}
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err == nil {
		p.epfd = fd
		p.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	}
	if err == nil {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.wake, &unix.EpollEvent{Events: unix.EPOLLIN})
	}
	if err != nil {
		log.Warn("epoll unavailable: one goroutine per WebSocket", zap.Error(err))
		for _, fd := range []int{p.epfd, p.wake} {
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		}
		p.epfd, p.wake = -1, -1
		close(p.done)
		return p
	}
	go p.run()
	return p
}

// detach takes a plain socket out of the Go runtime: it returns a
// non-blocking duplicate of nc's descriptor and closes nc (the runtime
// forgets its own descriptor; the socket stays open through the
// duplicate). keepIdle, if longer than the current TCP keep-alive idle
// time, replaces it: the agent's heartbeats prove it alive more often
// than probes would. ok is false when nc stays as it is (TLS, no epoll).
func (p *poller) detach(nc net.Conn, keepIdle time.Duration) (fd int, ok bool) {
	sc, isSys := nc.(syscall.Conn)
	if p.epfd < 0 || !isSys {
		return -1, false
	}
	if _, isTCP := nc.(*net.TCPConn); !isTCP {
		return -1, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd = -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return -1, false
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, false
	}
	if secs := int(keepIdle / time.Second); secs > 0 {
		if cur, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); err == nil && cur < secs {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
		}
	}
	_ = nc.Close()
	return fd, true
}

// add registers a new connection and arms it (or serves it at once when
// the handshake already carried data).
func (p *poller) add(w *wsConn) {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		_ = w.close(true)
		return
	}
	p.next++
	w.key = p.next
	p.conns[w.key] = w
	p.mu.Unlock()
	if w.fd < 0 {
		go w.loop()
		return
	}
	if len(w.in) > 0 {
		go p.first(w)
		return
	}
	if err := p.arm(w); err != nil {
		p.log.Warn("register websocket", zap.Error(err))
		_ = w.close(true)
	}
}

// first serves the frames that came with the handshake.
func (p *poller) first(w *wsConn) {
	items := w.ingest(nil, nil)
	p.track(w)
	p.serve(items, w)
}

// arm (re-)arms a connection's socket; the first time it adds it.
func (p *poller) arm(w *wsConn) error {
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	if w.fd < 0 || w.closed.Load() {
		return nil
	}
	w.armed.Store(true)
	if err := epollArm(p.epfd, w.fd, pollEvents, w.key); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// epollArm (re-)arms fd in the set for events under key; the first time
// it adds it.
func epollArm(epfd, fd int, events uint32, key uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
	err := unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, unix.ENOENT) {
		err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// remove forgets a connection (before its socket is closed) and returns
// its close callback: nil while it is a request not upgraded, which sets
// the callbacks under mu (Server.upgrade).
func (p *poller) remove(w *wsConn) func(types.Connection) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, w.key)
	delete(p.partial, w)
	return w.onClose
}

// closeRaw closes a detached descriptor. Closing the last descriptor of
// the socket takes it out of the epoll set, and an event already taken
// for it finds no connection under its key.
func (p *poller) closeRaw(fd int) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close websocket: %w", err)
	}
	return nil
}

// shutdownRaw ends both directions of a detached socket; a write blocked
// in poll returns.
func shutdownRaw(fd int) { _ = unix.Shutdown(fd, unix.SHUT_RDWR) }

// readRaw reads from a detached socket without blocking.
func readRaw(w *wsConn, b []byte) (int, error) {
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	if w.fd < 0 {
		return 0, net.ErrClosed
	}
	// The socket never blocks: no need to tell the scheduler.
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(w.fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// sendRaw writes all of b to a non-blocking socket. When the socket's
// buffer is full it waits in poll(2) for room, until the write timeout
// (or ctx's deadline) passes.
func sendRaw(ctx context.Context, fd int, b []byte, timeout time.Duration) error {
	var dl time.Time
	for len(b) > 0 {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		switch e {
		case 0:
			b = b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			if dl.IsZero() {
				dl = writeDeadline(ctx, timeout)
			}
			wait := time.Until(dl)
			if wait <= 0 {
				return errWriteTimeout
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(fds, int((wait+time.Millisecond-1)/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("wait for the agent to read: %w", err)
			}
		default:
			return e
		}
	}
	return nil
}

// track records whether a connection holds part of a frame, for the
// frame timeout.
func (p *poller) track(w *wsConn) {
	pend := w.pending()
	if pend == w.partial {
		return
	}
	w.partial = pend
	p.mu.Lock()
	if pend && !w.closed.Load() { // (close sets closed before remove takes mu)
		p.partial[w] = time.Now().Add(frameTimeout)
	} else {
		delete(p.partial, w)
	}
	p.mu.Unlock()
}

// sweep closes the connections that did not complete a frame in
// frameTimeout; it reports whether any are still waiting.
func (p *poller) sweep() bool {
	now := time.Now()
	var late []*wsConn
	p.mu.Lock()
	for w, deadline := range p.partial {
		if now.After(deadline) {
			late = append(late, w)
			delete(p.partial, w)
		}
	}
	left := len(p.partial) > 0
	p.mu.Unlock()
	for _, w := range late {
		if w.hs {
			w.s.log.Debug("request timed out", zap.String("remote", w.remote), zap.Duration("after", handshakeTimeout))
		} else {
			w.s.log.Debug("websocket frame timed out", zap.Duration("after", frameTimeout))
		}
		_ = w.close(true)
	}
	return left
}

// run serves rounds of events until stop, in a thread of its own that
// blocks in epoll_wait.
func (p *poller) run() {
	defer close(p.done)
	defer unix.Close(p.epfd)
	defer unix.Close(p.wake)
	events := make([]unix.EpollEvent, maxEvents)
	scratch := make([]byte, readBufferSize)
	var targets []*wsConn
	for {
		p.mu.Lock()
		timeout := -1
		if len(p.partial) > 0 {
			timeout = 1000 // to time out frames
		}
		p.mu.Unlock()
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.log.Error("epoll_wait: websockets are no longer read", zap.Error(err))
			return
		}
		targets = targets[:0]
		stop, accept := false, false
		p.mu.Lock()
		for i := range events[:n] {
			key := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			if key == 0 {
				stop = true
			} else if key == listenKey {
				accept = true
			} else if w := p.conns[key]; w != nil {
				targets = append(targets, w)
			}
		}
		partial := len(p.partial) > 0
		p.mu.Unlock()
		if stop {
			return
		}
		more := p.round(targets, scratch)
		clear(targets)
		if accept && p.acceptAll() {
			more = true // no pause while connections arrive
		}
		if partial {
			p.sweep()
		}
		if n > 0 && n < len(events) && !more {
			// Let the next events gather while this thread sleeps:
			// they wake nobody (no one waits on the set).
			ts := unix.NsecToTimespec(int64(gather))
			_ = unix.Nanosleep(&ts, nil)
		}
	}
}

// round reads every ready connection and hands what it read to
// goroutines: the bare heartbeats of all to one, each other connection's
// to its own. more reports that a socket had more to read than one round
// reads.
func (p *poller) round(targets []*wsConn, scratch []byte) (more bool) {
	var work, shared []inbound
	for _, w := range targets {
		if !w.armed.Swap(false) {
			continue // a stale event
		}
		if w.hs {
			p.readRequest(w, scratch)
			continue
		}
		start := len(work)
		var full bool
		work, full = p.read(w, scratch, work)
		more = more || full
		p.track(w)
		// Most messages of an idle fleet are taken here, in this
		// goroutine: waking another for them would cost more.
		items := quick(work[start:len(work):len(work)])
		switch {
		case len(items) == 0:
			if err := p.arm(w); err != nil {
				p.log.Warn("re-arm websocket", zap.Error(err))
				_ = w.close(true)
			}
		case simple(items):
			shared = append(shared, items...)
			clear(work[start:])
			work = work[:start]
		default:
			go p.serve(items, w)
		}
	}
	if len(shared) > 0 {
		go p.serveShared(shared)
	}
	return more
}

// read reads a ready socket until it would block (or readsPerEvent
// reads: full) and parses what came.
func (p *poller) read(w *wsConn, scratch []byte, out []inbound) (_ []inbound, full bool) {
	for range readsPerEvent {
		n, err := readRaw(w, scratch)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return out, false
		case err != nil:
			return append(out, inbound{w: w, kind: kindEnd, err: err}), false
		case n == 0:
			return append(out, inbound{w: w, kind: kindEnd}), false
		}
		start := len(out)
		out = w.ingest(scratch[:n], out)
		if len(out) > start && out[len(out)-1].kind.terminal() {
			return out, false
		}
		if n < len(scratch) {
			return out, false // drained; were more to come, the re-armed socket is ready at once
		}
	}
	return out, true
}

// serve acts on what was read from w and re-arms it.
func (p *poller) serve(items []inbound, w *wsConn) {
	if !w.run(items) {
		return
	}
	if err := p.arm(w); err != nil {
		p.log.Warn("re-arm websocket", zap.Error(err))
		_ = w.close(false)
	}
}

// serveShared serves the bare heartbeats of a round, connection by
// connection.
func (p *poller) serveShared(items []inbound) {
	for i := 0; i < len(items); {
		j := i + 1
		for j < len(items) && items[j].w == items[i].w {
			j++
		}
		p.serve(items[i:j], items[i].w)
		i = j
	}
}

// stop closes every connection still registered and ends run.
func (p *poller) stop() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		<-p.done
		return
	}
	p.stopped = true
	list := make([]*wsConn, 0, len(p.conns))
	for _, w := range p.conns {
		list = append(list, w)
	}
	p.mu.Unlock()
	for _, w := range list {
		_ = w.close(true)
	}
	// Every socket is closed: no arm uses the set any more; run closes
	// it.
	if p.wake >= 0 {
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(p.wake, one)
	}
	<-p.done
}
