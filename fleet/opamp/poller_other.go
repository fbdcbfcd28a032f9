//go:build !linux

package opamp

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/open-telemetry/opamp-go/server/types"
	"go.uber.org/zap"
)

// poller without epoll: one goroutine per WebSocket, blocking in reads.
type poller struct{}

func newPoller(*zap.Logger) *poller { return &poller{} }

// detach keeps every connection in the Go runtime.
func (p *poller) detach(net.Conn, time.Duration) (int, bool) { return -1, false }

func (p *poller) add(w *wsConn) { go w.loop() }

func (p *poller) remove(w *wsConn) func(types.Connection) { return w.onClose }

func (p *poller) stop() {}

// Listen returns ln: without epoll every handshake goes through net/http.
func (s *Server) Listen(ln net.Listener) net.Listener { return ln }

// No connection is detached here: the raw operations are never called.

var errNoRawSockets = errors.New("no detached sockets on this system")

func (p *poller) closeRaw(int) error { return errNoRawSockets }

func shutdownRaw(int) {}

func sendRaw(context.Context, int, []byte, time.Duration) error { return errNoRawSockets }
