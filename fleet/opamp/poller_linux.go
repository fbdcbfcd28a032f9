package opamp

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// poller waits for readable WebSockets in one epoll set. Sockets are armed
// one-shot: an event runs one goroutine for that socket (wsConn.serve),
// which re-arms it when done, so a connection is never read by two
// goroutines and an idle one costs no goroutine. The same descriptors are
// also in the Go runtime's own poller, which the reads and writes of
// net.Conn go through as usual; this set only says when to start reading.
type poller struct {
	log     *zap.Logger
	epfd    int // -1: epoll unavailable, one goroutine per connection instead
	mu      sync.Mutex
	conns   map[uint64]*wsConn
	next    uint64
	stopped atomic.Bool
	done    chan struct{}
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller(log *zap.Logger) *poller {
	p := &poller{log: log, conns: map[uint64]*wsConn{}, done: make(chan struct{})}
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		log.Warn("epoll unavailable: one goroutine per WebSocket", zap.Error(err))
		p.epfd = -1
		close(p.done)
		return p
	}
	p.epfd = fd
	go p.run()
	return p
}

// add registers a new connection and arms it (or serves it at once when
// the handshake already carried data).
func (p *poller) add(w *wsConn) {
	p.mu.Lock()
	p.next++
	w.key = p.next
	p.conns[w.key] = w
	p.mu.Unlock()
	if p.epfd < 0 || w.rc == nil {
		go w.loop()
		return
	}
	if len(w.prefix) > 0 {
		go w.serve() // serve registers the socket when it re-arms it
		return
	}
	if err := p.ctl(w, unix.EPOLL_CTL_ADD); err != nil {
		p.log.Warn("register websocket", zap.Error(err))
		_ = w.close(true)
	}
}

// arm re-arms a connection after an event was served.
func (p *poller) arm(w *wsConn) error {
	if p.epfd < 0 || w.rc == nil {
		return nil // loop reads again
	}
	err := p.ctl(w, unix.EPOLL_CTL_MOD)
	if errors.Is(err, unix.ENOENT) {
		err = p.ctl(w, unix.EPOLL_CTL_ADD) // first arm after serving the handshake's data
	}
	return err
}

// remove forgets a connection (before its socket is closed).
func (p *poller) remove(w *wsConn) {
	p.mu.Lock()
	delete(p.conns, w.key)
	p.mu.Unlock()
	if p.epfd >= 0 && w.rc != nil {
		_ = p.ctl(w, unix.EPOLL_CTL_DEL)
	}
}

func (p *poller) ctl(w *wsConn, op int) error {
	var cerr error
	err := w.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: pollEvents, Fd: int32(uint32(w.key)), Pad: int32(uint32(w.key >> 32))}
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err != nil {
		return fmt.Errorf("websocket descriptor: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("epoll_ctl: %w", cerr)
	}
	return nil
}

// run dispatches readiness events until stop.
func (p *poller) run() {
	defer close(p.done)
	defer unix.Close(p.epfd)
	events := make([]unix.EpollEvent, 256)
	for !p.stopped.Load() {
		n, err := unix.EpollWait(p.epfd, events, 500)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.log.Error("epoll_wait: websockets are no longer read", zap.Error(err))
			return
		}
		for i := range events[:n] {
			key := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			p.mu.Lock()
			w := p.conns[key]
			p.mu.Unlock()
			if w != nil {
				go w.serve()
			}
		}
	}
}

// stop closes every connection still registered and ends run.
func (p *poller) stop() {
	p.mu.Lock()
	list := make([]*wsConn, 0, len(p.conns))
	for _, w := range p.conns {
		list = append(list, w)
	}
	p.mu.Unlock()
	for _, w := range list {
		_ = w.close(true)
	}
	p.stopped.Store(true)
	<-p.done
}
