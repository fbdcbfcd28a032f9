//go:build !linux

package opamp

import "go.uber.org/zap"

// poller without epoll: one goroutine per WebSocket, blocking in reads.
type poller struct{}

func newPoller(*zap.Logger) *poller { return &poller{} }

func (p *poller) add(w *wsConn) { go w.loop() }

func (p *poller) arm(*wsConn) error { return nil }

func (p *poller) remove(*wsConn) {}

func (p *poller) stop() {}
