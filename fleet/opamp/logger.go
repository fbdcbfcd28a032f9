package opamp

import (
	"context"
	"net"

	"go.uber.org/zap"
)

type netConn = net.Conn

// zapLogger adapts zap to opamp-go's logger; its errors are per-connection
// noise (agents going away), so they are logged at debug.
type zapLogger struct{ l *zap.SugaredLogger }

func (z *zapLogger) Debugf(_ context.Context, f string, v ...any) { z.l.Debugf(f, v...) }
func (z *zapLogger) Errorf(_ context.Context, f string, v ...any) { z.l.Debugf(f, v...) }
