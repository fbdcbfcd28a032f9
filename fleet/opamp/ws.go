package opamp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
// socket and two small structs: the sockets wait in one epoll set (see
// poller_linux.go), a readiness event runs one short-lived goroutine that
// reads the frames with a pooled buffer, hands each message to the same
// handlers as the plain-HTTP transport (which opamp-go still serves), and
// re-arms the socket. Framing and the handshake are gobwas/ws; the message
// encoding is OpAMP's (a varint header 0, then the protobuf), as in
// opamp-go.

const (
	// frameTimeout bounds the time to receive the rest of a frame once
	// its first byte arrived, so a client that stalls mid-frame cannot
	// hold a goroutine.
	frameTimeout = 30 * time.Second
	// readBufferSize is the pooled read buffer; an idle heartbeat is
	// ~100 bytes, larger frames are read past it.
	readBufferSize = 4096
)

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}
	writers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
	// errClosedByPeer: the agent sent a close frame.
	errClosedByPeer = errors.New("websocket closed by the agent")
)

// isWebSocket reports whether r asks for a WebSocket upgrade.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// serveWS admits (or refuses) an agent's WebSocket handshake and hands the
// connection to the poller.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	resp := s.onConnecting(r)
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
	wc := &wsConn{s: s, nc: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		wc.rc, _ = sc.SyscallConn()
	}
	// A client may send its first frames right behind the handshake; they
	// sit in net/http's reader, which is dropped here.
	if n := brw.Reader.Buffered(); n > 0 {
		wc.prefix, _ = brw.Reader.Peek(n)
		wc.prefix = bytes.Clone(wc.prefix)
	}
	c := resp.ConnectionCallbacks
	wc.onMessage, wc.onClose = c.OnMessage, c.OnConnectionClose
	c.OnConnected(r.Context(), wc)
	s.poll.add(wc)
}

// wsConn is one agent's WebSocket. It implements types.Connection.
type wsConn struct {
	s  *Server
	nc net.Conn
	rc syscall.RawConn // nil when nc has no descriptor (tests)
	// key identifies the connection in the poller (never reused, unlike
	// the descriptor).
	key       uint64
	onMessage func(context.Context, types.Connection, *protobufs.AgentToServer) *protobufs.ServerToAgent
	onClose   func(types.Connection)

	// Read side: only the goroutine serving a readiness event touches
	// these (the poller arms the socket one-shot).
	prefix    []byte // bytes received with the handshake, read first
	frag      []byte // a fragmented message being assembled
	fragging  bool
	fragOp    ws.OpCode
	sentFirst bool

	wmu    sync.Mutex // serializes writes
	closed atomic.Bool
}

// Connection returns the socket.
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
// it takes the header.
func (w *wsConn) writeFrame(ctx context.Context, op ws.OpCode, buf []byte) error {
	payload := len(buf) - ws.MaxHeaderSize
	h := ws.Header{Fin: true, OpCode: op, Length: int64(payload)}
	hs := ws.HeaderSize(h)
	start := ws.MaxHeaderSize - hs
	if err := ws.WriteHeader(&fixedWriter{b: buf[start:ws.MaxHeaderSize]}, h); err != nil {
		return fmt.Errorf("encode frame header: %w", err)
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.closed.Load() {
		return net.ErrClosed
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

// fixedWriter writes into a slice of exactly the header's size.
type fixedWriter struct{ b []byte }

func (f *fixedWriter) Write(p []byte) (int, error) {
	if len(p) > len(f.b) {
		return 0, io.ErrShortWrite
	}
	n := copy(f.b, p)
	f.b = f.b[n:]
	return n, nil
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
	w.s.poll.remove(w)
	w.wmu.Lock() // a write in progress finishes or times out first
	err := w.nc.Close()
	w.wmu.Unlock()
	if async {
		go w.onClose(w)
	} else {
		w.onClose(w)
	}
	return err
}

// fail closes the connection with a close frame carrying code.
func (w *wsConn) fail(code ws.StatusCode, err error) {
	w.s.log.Debug("websocket protocol error", zap.Error(err))
	_ = w.control(ws.OpClose, ws.NewCloseFrameBody(code, ""))
	_ = w.close(false)
}

// source is what the pooled reader reads: the handshake leftovers first,
// then the socket.
type source struct{ w *wsConn }

func (s source) Read(p []byte) (int, error) {
	if len(s.w.prefix) > 0 {
		n := copy(p, s.w.prefix)
		s.w.prefix = s.w.prefix[n:]
		if len(s.w.prefix) == 0 {
			s.w.prefix = nil
		}
		return n, nil
	}
	return s.w.nc.Read(p)
}

// loop serves a connection from its own goroutine, blocking in reads:
// the fallback where epoll is unavailable or the connection has no
// descriptor of its own (TLS).
func (w *wsConn) loop() {
	for !w.closed.Load() {
		w.read(time.Time{})
	}
}

// serve handles one readiness event.
func (w *wsConn) serve() {
	w.read(time.Now().Add(frameTimeout))
}

// read reads frames until nothing is buffered at a frame boundary, then
// re-arms the socket. deadline bounds the reads (zero: none).
func (w *wsConn) read(deadline time.Time) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(source{w})
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	_ = w.nc.SetReadDeadline(deadline)
	for {
		if err := w.readFrame(br); err != nil {
			if !errors.Is(err, errClosedByPeer) && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				w.s.log.Debug("websocket read", zap.Error(err))
			}
			_ = w.close(false)
			return
		}
		if w.closed.Load() {
			return
		}
		if br.Buffered() == 0 && len(w.prefix) == 0 {
			break
		}
	}
	if err := w.s.poll.arm(w); err != nil {
		_ = w.close(false)
	}
}

// readFrame reads and handles one frame.
func (w *wsConn) readFrame(br *bufio.Reader) error {
	h, err := ws.ReadHeader(br)
	if err != nil {
		return fmt.Errorf("read frame header: %w", err)
	}
	state := ws.StateServerSide
	if w.fragging {
		state |= ws.StateFragmented
	}
	if err := ws.CheckHeader(h, state); err != nil {
		w.fail(ws.StatusProtocolError, err)
		return errClosedByPeer
	}
	if limit := w.s.o.MaxMessageBytes; h.Length > limit || int64(len(w.frag))+h.Length > limit {
		w.fail(ws.StatusMessageTooBig, fmt.Errorf("message larger than %d bytes", limit))
		return errClosedByPeer
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(br, payload); err != nil {
		return fmt.Errorf("read frame payload: %w", err)
	}
	ws.Cipher(payload, h.Mask, 0)
	switch h.OpCode {
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameData(payload)
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		_ = w.control(ws.OpClose, ws.NewCloseFrameBody(code, ""))
		return errClosedByPeer
	case ws.OpPing:
		return w.control(ws.OpPong, payload)
	case ws.OpPong:
		return nil
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
		return nil
	}
	if w.fragging {
		payload = append(w.frag, payload...)
		w.frag, w.fragging = nil, false
	}
	return w.handle(op, payload)
}

// handle decodes one message and answers it.
func (w *wsConn) handle(op ws.OpCode, data []byte) error {
	if op != ws.OpBinary {
		w.s.log.Debug("malformed opamp frame", zap.Int("bytes", len(data)), zap.String("reason", "not a binary message"))
		return nil
	}
	msg := &protobufs.AgentToServer{}
	if err := decodeMessage(data, msg); err != nil {
		// As opamp-go: a message that does not decode is dropped, the
		// connection stays.
		w.s.log.Debug("malformed opamp frame", zap.Int("bytes", len(data)), zap.Error(err))
		return nil
	}
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
