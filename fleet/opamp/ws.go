package opamp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/open-telemetry/opamp-go/server/types"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// The WebSocket transport of OpAMP, held without a goroutine or a buffer
// per idle agent.
//
// opamp-go's server parks one goroutine per WebSocket in a blocking read
// and gorilla keeps a read and a write buffer per connection: ~12 KiB per
// idle agent that sends ~100 bytes every 30 s. Here an idle agent is its
// socket and one small struct. After the handshake a plain-TCP socket
// leaves the Go runtime's poller: the server keeps a duplicate of its
// descriptor, non-blocking, in its own epoll set (poller_linux.go) and
// reads and writes it with raw system calls, so a heartbeat wakes one
// poller, not two. The poller reads the bytes of every ready socket with
// one buffer, parses and decodes the frames, and hands the messages to the
// same handlers as the plain-HTTP transport (which opamp-go still serves):
// the bare heartbeats of one round of events in one goroutine, anything
// else in a goroutine of its own connection. A frame cut by the network is
// kept (only its bytes) until the rest arrives. TLS connections, and any
// system without epoll, keep one goroutine per connection that blocks in
// net.Conn reads. Framing follows RFC 6455 (gobwas/ws for the handshake
// and the header checks); the message encoding is OpAMP's (a varint header
// 0, then the protobuf), as in opamp-go.

// frameTimeout bounds the time a client may take to complete a frame (or
// a fragmented message) it started, so a client that stalls mid-frame
// cannot hold its partial bytes for ever. (A variable for the tests.)
var frameTimeout = 30 * time.Second

const (
	// readBufferSize is the poller's read buffer; an idle heartbeat is
	// ~100 bytes, larger frames are assembled across reads.
	readBufferSize = 4096
)

var (
	writers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
	// errClosedByPeer: the agent sent a close frame.
	errClosedByPeer = errors.New("websocket closed by the agent")
	// errWriteTimeout: the agent did not take a frame within the write
	// timeout.
	errWriteTimeout = errors.New("write to agent timed out")
)

// isWebSocket reports whether r asks for a WebSocket upgrade.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// serveWS admits (or refuses) an agent's WebSocket handshake and hands the
// connection to the poller.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	resp, sc := s.accept(r.Context(), requestOf(r))
	if !resp.Accept {
		for k, v := range resp.HTTPResponseHeader {
			w.Header().Set(k, v)
		}
		w.WriteHeader(resp.HTTPStatusCode)
		return
	}
	nc, brw, _, err := ws.HTTPUpgrader{Timeout: s.o.WriteTimeout}.Upgrade(r, w)
	if err != nil {
		s.log.Debug("websocket upgrade", zap.String("remote", r.RemoteAddr), zap.Error(err))
		if nc != nil {
			_ = nc.Close()
		}
		return
	}
	s.m.handshakes.WithLabelValues("net_http").Inc()
	wc := &wsConn{s: s, nc: nc, fd: -1}
	// A client may send its first frames right behind the handshake; they
	// sit in net/http's reader, which is dropped here.
	if n := brw.Reader.Buffered(); n > 0 {
		p, _ := brw.Reader.Peek(n)
		wc.in = append([]byte(nil), p...)
	}
	if fd, ok := s.poll.detach(nc, 2*s.o.HeartbeatInterval); ok {
		wc.fd, wc.nc = fd, nil
	}
	c := resp.ConnectionCallbacks
	wc.onMessage, wc.onClose, wc.heartbeat = c.OnMessage, c.OnConnectionClose, sc.heartbeat
	c.OnConnected(r.Context(), wc)
	s.poll.add(wc)
}

// wsConn is one agent's WebSocket. It implements types.Connection.
type wsConn struct {
	s *Server
	// nc is the connection when it is served by a goroutine (TLS, no
	// epoll); nil when the descriptor fd was taken out of it.
	nc net.Conn
	// fd is the socket's own non-blocking descriptor, -1 without one.
	// Reads, writes and epoll calls use it under fdMu read-locked; close
	// sets it to -1 under fdMu locked, so a number the kernel reuses is
	// never touched.
	fd   int
	fdMu sync.RWMutex
	// key identifies the connection in the poller (never reused, unlike
	// the descriptor).
	key       uint64
	onMessage func(context.Context, types.Connection, *protobufs.AgentToServer) *protobufs.ServerToAgent
	onClose   func(types.Connection)
	// heartbeat takes a message that needs no store work and no answer
	// without blocking (conn.heartbeat); false: it is for onMessage.
	heartbeat func(*protobufs.AgentToServer) bool

	// armed is set before the socket is armed in the epoll set and taken
	// by the poller's event: it passes the read side below from the
	// goroutine that served the last event to the poller.
	armed atomic.Bool

	// Read side: one owner at a time (the poller while reading, then the
	// goroutine handling what it read, until the socket is re-armed).
	in        []byte // received bytes of an incomplete frame (first: those of the handshake)
	frag      []byte // a fragmented message being assembled
	fragging  bool
	fragOp    ws.OpCode
	partial   bool // in or frag holds data: the poller times it out
	ended     bool // a close frame or a protocol error was read
	sentFirst bool

	wmu    sync.Mutex // serializes writes
	closed atomic.Bool

	// hs: the connection was accepted by the poller (Server.Listen) and
	// its request is being read; in holds what came of it. remote is
	// the peer's address then.
	hs     bool
	remote string
}

// Connection returns the socket, or nil when the server reads and writes
// its descriptor itself (every plain-TCP WebSocket on Linux): its writes
// take the write timeout on their own.
func (w *wsConn) Connection() net.Conn { return w.nc }

// Send writes one ServerToAgent message as one binary frame.
func (w *wsConn) Send(ctx context.Context, msg *protobufs.ServerToAgent) error {
	bp := writers.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 {
			writers.Put(bp)
		}
	}()
	// Room for the largest frame header, then the OpAMP header (varint 0)
	// and the message; the frame header is written in front once the
	// length is known.
	buf := append((*bp)[:0], make([]byte, ws.MaxHeaderSize)...)
	buf = append(buf, 0)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, msg)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	*bp = buf
	return w.writeFrame(ctx, ws.OpBinary, buf)
}

// writeFrame writes buf[ws.MaxHeaderSize:] as one frame; the space before
// it takes the header. The write gives up after the server's write
// timeout or at ctx's deadline, whichever comes first.
func (w *wsConn) writeFrame(ctx context.Context, op ws.OpCode, buf []byte) error {
	payload := len(buf) - ws.MaxHeaderSize
	h := ws.Header{Fin: true, OpCode: op, Length: int64(payload)}
	hs := ws.HeaderSize(h)
	start := ws.MaxHeaderSize - hs
	putHeader(buf[start:ws.MaxHeaderSize], h)
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.closed.Load() || (w.fd < 0 && w.nc == nil) {
		return net.ErrClosed
	}
	if w.fd >= 0 {
		if err := sendRaw(ctx, w.fd, buf[start:], w.s.o.WriteTimeout); err != nil {
			return fmt.Errorf("write frame: %w", err)
		}
		return nil
	}
	dl := time.Now().Add(w.s.o.WriteTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = w.nc.SetWriteDeadline(dl)
	if _, err := w.nc.Write(buf[start:]); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// writeDeadline is when a write that started now must give up.
func writeDeadline(ctx context.Context, timeout time.Duration) time.Time {
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	return dl
}

// putHeader encodes an unmasked server frame header into b, which has
// exactly ws.HeaderSize(h) bytes.
func putHeader(b []byte, h ws.Header) {
	b[0] = byte(h.OpCode)
	if h.Fin {
		b[0] |= 0x80
	}
	switch {
	case h.Length < 126:
		b[1] = byte(h.Length)
	case h.Length <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(h.Length))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(h.Length))
	}
}

// control sends a control frame (pong, close) with payload p.
func (w *wsConn) control(op ws.OpCode, p []byte) error {
	buf := make([]byte, ws.MaxHeaderSize, ws.MaxHeaderSize+len(p))
	buf = append(buf, p...)
	return w.writeFrame(context.Background(), op, buf)
}

// Disconnect closes the socket; the agent's record is updated in the
// background, as when the agent hangs up.
func (w *wsConn) Disconnect() error {
	return w.close(true)
}

// close closes the connection once and runs the close callback (in its
// own goroutine when async, so that a caller holding locks never waits for
// the store).
func (w *wsConn) close(async bool) error {
	if !w.closed.CompareAndSwap(false, true) {
		return nil
	}
	onClose := w.s.poll.remove(w)
	var err error
	if w.fd >= 0 {
		// Only close sets fd, and it runs once: the descriptor is
		// still ours. Shutting it down first ends a write blocked in
		// poll, which holds fdMu read-locked.
		shutdownRaw(w.fd)
		w.fdMu.Lock()
		err = w.s.poll.closeRaw(w.fd)
		w.fd = -1
		w.fdMu.Unlock()
	} else {
		w.wmu.Lock() // a write in progress finishes or times out first
		err = w.nc.Close()
		w.wmu.Unlock()
	}
	switch {
	case onClose == nil: // a request that never became a WebSocket
	case async:
		go onClose(w)
	default:
		onClose(w)
	}
	return err
}

// inbound is one thing a read produced that its connection's handler
// must act on, in order.
type inbound struct {
	w    *wsConn
	kind inboundKind
	msg  *protobufs.AgentToServer // kindMessage
	data []byte                   // kindPing: the pong payload
	code ws.StatusCode            // kindClose: the status to send
	err  error                    // kindClose, kindEnd: why
}

type inboundKind uint8

const (
	// kindMessage: a decoded AgentToServer.
	kindMessage inboundKind = iota
	// kindPing: answer with a pong.
	kindPing
	// kindClose: send a close frame with code, then close.
	kindClose
	// kindEnd: the connection ended (EOF, read error): close.
	kindEnd
)

// terminal reports whether nothing after it is to be read.
func (k inboundKind) terminal() bool { return k >= kindClose }

// ingest parses the frames of data (bytes just received; nil to parse
// what w.in holds) and appends what they ask for to out. Bytes of an
// incomplete frame are kept in w.in. Decoding happens here; messages that
// do not decode are dropped, as opamp-go does. After a terminal item
// nothing more is parsed.
func (w *wsConn) ingest(data []byte, out []inbound) []inbound {
	if w.ended {
		return out
	}
	buf := data
	if len(w.in) > 0 {
		w.in = append(w.in, data...)
		buf = w.in
	}
	for len(buf) > 0 {
		h, hl, ok, err := parseHeader(buf)
		if err != nil {
			return w.end(append(out, inbound{w: w, kind: kindClose, code: ws.StatusProtocolError, err: err}))
		}
		if !ok {
			break
		}
		state := ws.StateServerSide
		if w.fragging {
			state |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, state); err != nil {
			return w.end(append(out, inbound{w: w, kind: kindClose, code: ws.StatusProtocolError, err: err}))
		}
		if limit := w.s.o.MaxMessageBytes; h.Length > limit || int64(len(w.frag))+h.Length > limit {
			return w.end(append(out, inbound{w: w, kind: kindClose, code: ws.StatusMessageTooBig, err: fmt.Errorf("message larger than %d bytes", limit)}))
		}
		if int64(len(buf)-hl) < h.Length {
			break
		}
		payload := buf[hl : hl+int(h.Length)]
		buf = buf[hl+int(h.Length):]
		ws.Cipher(payload, h.Mask, 0)
		var stop bool
		out, stop = w.frame(h, payload, out)
		if stop {
			return w.end(out)
		}
	}
	switch {
	case len(buf) == 0:
		w.in = nil
	case len(w.in) > 0:
		// Keep only the unparsed tail; the array is reused unless it
		// is much larger than what remains.
		if cap(w.in) > 4*len(buf) && cap(w.in) > readBufferSize {
			w.in = append([]byte(nil), buf...)
		} else {
			w.in = w.in[:copy(w.in, buf)]
		}
	default:
		w.in = append([]byte(nil), buf...)
	}
	return out
}

// end drops the read state after a terminal item: nothing after it is
// parsed.
func (w *wsConn) end(out []inbound) []inbound {
	w.in, w.frag, w.fragging, w.ended = nil, nil, false, true
	return out
}

// frame acts on one unmasked frame; stop is true after a terminal item.
func (w *wsConn) frame(h ws.Header, payload []byte, out []inbound) (_ []inbound, stop bool) {
	switch h.OpCode {
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameData(payload)
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		return append(out, inbound{w: w, kind: kindClose, code: code, err: errClosedByPeer}), true
	case ws.OpPing:
		return append(out, inbound{w: w, kind: kindPing, data: append([]byte(nil), payload...)}), false
	case ws.OpPong:
		return out, false
	}
	op := h.OpCode
	if h.OpCode == ws.OpContinuation {
		op = w.fragOp
	}
	if !h.Fin {
		if !w.fragging {
			w.fragging, w.fragOp = true, h.OpCode
		}
		w.frag = append(w.frag, payload...)
		return out, false
	}
	if w.fragging {
		payload = append(w.frag, payload...)
		w.frag, w.fragging = nil, false
	}
	if op != ws.OpBinary {
		w.s.log.Debug("malformed opamp frame", zap.Int("bytes", len(payload)), zap.String("reason", "not a binary message"))
		return out, false
	}
	msg := &protobufs.AgentToServer{}
	if err := decodeMessage(payload, msg); err != nil {
		// As opamp-go: a message that does not decode is dropped, the
		// connection stays.
		w.s.log.Debug("malformed opamp frame", zap.Int("bytes", len(payload)), zap.Error(err))
		return out, false
	}
	return append(out, inbound{w: w, kind: kindMessage, msg: msg}), false
}

// pending reports whether the read side holds part of a frame or of a
// fragmented message.
func (w *wsConn) pending() bool { return len(w.in) > 0 || w.fragging }

// parseHeader decodes the frame header at the start of b; ok is false
// while b holds only part of it.
func parseHeader(b []byte) (h ws.Header, n int, ok bool, err error) {
	if len(b) < 2 {
		return h, 0, false, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, false, nil
		}
		h.Length, n = int64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return h, 0, false, nil
		}
		if b[2]&0x80 != 0 {
			return h, 0, false, ws.ErrHeaderLengthMSB
		}
		h.Length, n = int64(binary.BigEndian.Uint64(b[2:])), 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, false, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, true, nil
}

// run acts on what a read produced, in order; it reports whether the
// connection is still open (and is to be read again).
func (w *wsConn) run(items []inbound) bool {
	for i := range items {
		it := &items[i]
		switch it.kind {
		case kindMessage:
			if err := w.handle(it.msg); err != nil {
				w.s.log.Debug("websocket write", zap.Error(err))
				_ = w.close(false)
				return false
			}
		case kindPing:
			if err := w.control(ws.OpPong, it.data); err != nil {
				_ = w.close(false)
				return false
			}
		case kindClose:
			if !errors.Is(it.err, errClosedByPeer) {
				w.s.log.Debug("websocket protocol error", zap.Error(it.err))
			}
			_ = w.control(ws.OpClose, ws.NewCloseFrameBody(it.code, ""))
			_ = w.close(false)
			return false
		case kindEnd:
			if it.err != nil && !errors.Is(it.err, io.EOF) && !errors.Is(it.err, net.ErrClosed) {
				w.s.log.Debug("websocket read", zap.Error(it.err))
			}
			_ = w.close(false)
			return false
		}
		if w.closed.Load() {
			return false
		}
	}
	return !w.closed.Load()
}

// simple reports whether items are bare heartbeats on a connection that
// was answered before: they need no store work in the usual case and can
// share a goroutine with other connections' heartbeats.
func simple(items []inbound) bool {
	for i := range items {
		if items[i].kind != kindMessage || !items[i].w.sentFirst || !bare(items[i].msg) {
			return false
		}
	}
	return true
}

// quick takes the leading items that are heartbeats needing nothing but
// a count, without blocking, and returns the rest.
func quick(items []inbound) []inbound {
	for len(items) > 0 {
		it := &items[0]
		if it.kind != kindMessage || !it.w.sentFirst || it.w.heartbeat == nil || !bare(it.msg) || !it.w.heartbeat(it.msg) {
			break
		}
		*it = inbound{}
		items = items[1:]
	}
	return items
}

// bare reports whether a message carries nothing but the agent's
// identity, sequence number and capabilities.
func bare(m *protobufs.AgentToServer) bool {
	return m.AgentDescription == nil && m.Health == nil && m.EffectiveConfig == nil && m.RemoteConfigStatus == nil &&
		m.PackageStatuses == nil && m.AgentDisconnect == nil && m.Flags == 0 && m.ConnectionSettingsRequest == nil &&
		m.CustomCapabilities == nil && m.CustomMessage == nil && m.AvailableComponents == nil && m.ConnectionSettingsStatus == nil
}

// loop serves a connection from its own goroutine, blocking in reads:
// the fallback where epoll is unavailable or the connection has no
// descriptor of its own (TLS).
func (w *wsConn) loop() {
	buf := make([]byte, readBufferSize)
	var items []inbound
	if len(w.in) > 0 {
		items = w.ingest(nil, items)
	}
	for {
		if len(items) > 0 && !w.run(items) {
			return
		}
		if w.closed.Load() {
			return
		}
		clear(items)
		items = items[:0]
		n, err := w.nc.Read(buf)
		if n > 0 {
			items = w.ingest(buf[:n], items)
		}
		if err != nil && (len(items) == 0 || !items[len(items)-1].kind.terminal()) {
			items = append(items, inbound{w: w, kind: kindEnd, err: err})
		}
	}
}

// handle answers one message.
func (w *wsConn) handle(msg *protobufs.AgentToServer) error {
	resp := w.onMessage(context.Background(), w, msg)
	if resp == nil || (w.sentFirst && bareAck(resp)) {
		// A bare heartbeat needs no answer on a WebSocket: the agent
		// does not wait for one, and not writing halves the syscalls of
		// an idle fleet.
		return nil
	}
	if len(resp.InstanceUid) == 0 {
		resp.InstanceUid = msg.InstanceUid
	}
	if !w.sentFirst {
		resp.CustomCapabilities = &protobufs.CustomCapabilities{}
		w.sentFirst = true
	}
	if err := w.Send(context.Background(), resp); err != nil {
		return fmt.Errorf("answer agent: %w", err)
	}
	return nil
}

// bareAck reports whether a response says nothing but "received".
func bareAck(r *protobufs.ServerToAgent) bool {
	return r.ErrorResponse == nil && r.RemoteConfig == nil && r.ConnectionSettings == nil &&
		r.PackagesAvailable == nil && r.Flags == 0 && r.AgentIdentification == nil &&
		r.Command == nil && r.CustomCapabilities == nil && r.CustomMessage == nil
}

// decodeMessage decodes an OpAMP WebSocket message: an optional varint
// header that must be 0, then the protobuf (as opamp-go's DecodeWSMessage).
func decodeMessage(b []byte, msg proto.Message) error {
	if len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		return fmt.Errorf("decode AgentToServer: %w", err)
	}
	return nil
}
