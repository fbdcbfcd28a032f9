package control

import (
	"context"

	"go.uber.org/zap"
)

// zapLogger adapts zap to opamp-go's logger. Its "errors" are connection
// retries, which this package reports itself, so they go to debug.
type zapLogger struct{ l *zap.SugaredLogger }

func (z *zapLogger) Debugf(_ context.Context, f string, v ...any) { z.l.Debugf(f, v...) }
func (z *zapLogger) Errorf(_ context.Context, f string, v ...any) { z.l.Debugf(f, v...) }
