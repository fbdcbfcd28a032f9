package agent

import "context"

// runDataPlane samples, builds and uploads profiles until ctx ends.
func (a *Agent) runDataPlane(ctx context.Context) error {
	<-ctx.Done()
	return nil
}
