package opamp

import (
	"bufio"
	"net"
	"net/http"
)

// Buffer sizes of a held WebSocket connection. net/http hands a hijacked
// connection over with a 4 KiB reader and a 4 KiB writer that gorilla
// would keep for the life of the connection; OpAMP traffic of an idle agent is
// a heartbeat of ~100 bytes every 30 s, so smaller buffers hold the same
// traffic. Larger messages still pass: reads beyond the buffer go straight
// to the socket and writes are split into frames of the write buffer.
const (
	// wsReadBuffer must hold a frame header and a control frame (125 B).
	wsReadBuffer = 1024
	// wsWriteBuffer only carries the handshake: gorilla (at the version
	// opamp-go pins) allocates its own 4 KiB write buffer per connection.
	wsWriteBuffer = 512
)

// smallBuffers makes WebSocket upgrades hand gorilla small buffers, and
// closes plain-HTTP connections after their answer: an agent's plain-HTTP
// requests are rare (credential probes, admission checks, HTTP-transport
// polls every heartbeat), while an idle keep-alive connection would hold
// 8 KiB of net/http buffers, a goroutine and a file descriptor on the
// fleet for as long as the agent's transport keeps it — as much as the
// agent's WebSocket itself, and descriptors are capped at 20,000.
func smallBuffers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			w = &hijacker{ResponseWriter: w}
		} else {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

type hijacker struct {
	http.ResponseWriter
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (h *hijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// Hijack hijacks the connection and swaps net/http's buffers for small
// ones, unless the client already sent bytes that sit in the old reader.
func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 || brw.Writer.Buffered() > 0 {
		return c, brw, err
	}
	return c, bufio.NewReadWriter(bufio.NewReaderSize(c, wsReadBuffer), bufio.NewWriterSize(c, wsWriteBuffer)), nil
}
