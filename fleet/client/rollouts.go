package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/rollout"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// ApplyConfig stores a config version and starts its rollout.
func (c *Client) ApplyConfig(ctx context.Context, project string, req console.ApplyConfigRequest) (*console.AppliedConfig, error) {
	var out console.AppliedConfig
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/rollouts", req, &out)
}

// ListConfigs lists a project's config versions, newest first.
func (c *Client) ListConfigs(ctx context.Context, project string) ([]*store.ConfigVersion, error) {
	var out []*store.ConfigVersion
	return out, c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(project)+"/configs", nil, &out)
}

// ListRollouts lists a project's rollouts, newest first.
func (c *Client) ListRollouts(ctx context.Context, project string) ([]*store.Rollout, error) {
	var out []*store.Rollout
	return out, c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(project)+"/rollouts", nil, &out)
}

// Rollout returns a rollout with its progress.
func (c *Client) Rollout(ctx context.Context, id string) (*rollout.Status, error) {
	var out rollout.Status
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/rollouts/"+url.PathEscape(id), nil, &out)
}

// RolloutProgress returns a rollout with its counts, without the list of
// agents (cheap to poll).
func (c *Client) RolloutProgress(ctx context.Context, id string) (*rollout.Status, error) {
	var out rollout.Status
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/rollouts/"+url.PathEscape(id)+"?agents=false", nil, &out)
}

// RolloutAction runs pause, resume or rollback on a rollout.
func (c *Client) RolloutAction(ctx context.Context, id, action string) (*rollout.Status, error) {
	var out rollout.Status
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/rollouts/"+url.PathEscape(id)+"/"+url.PathEscape(action), struct{}{}, &out)
}
