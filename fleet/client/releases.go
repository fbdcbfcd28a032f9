package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/release"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// UploadRelease uploads an agent binary as release version.
func (c *Client) UploadRelease(ctx context.Context, version string, body io.Reader) (*store.Release, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/releases?version="+url.QueryEscape(version), body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upload release: %w", err)
	}
	defer resp.Body.Close()
	var env struct {
		Data  *store.Release     `json:"data"`
		Error *console.ErrorBody `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&env); err != nil {
		return nil, &APIError{Status: resp.StatusCode, Code: "bad_response", Message: err.Error()}
	}
	if env.Error != nil || resp.StatusCode >= 400 || env.Data == nil {
		e := &APIError{Status: resp.StatusCode}
		if env.Error != nil {
			e.Code, e.Message = env.Error.Code, env.Error.Message
		}
		return nil, e
	}
	return env.Data, nil
}

// RegisterRelease registers a release that agents download from a URL.
func (c *Client) RegisterRelease(ctx context.Context, req console.RegisterReleaseRequest) (*store.Release, error) {
	var out store.Release
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/releases", req, &out)
}

// ListReleases lists the fleet's agent releases, newest first.
func (c *Client) ListReleases(ctx context.Context) ([]*store.Release, error) {
	var out []*store.Release
	return out, c.Do(ctx, http.MethodGet, "/api/v1/releases", nil, &out)
}

// StartReleaseRollout starts a staged rollout of a release.
func (c *Client) StartReleaseRollout(ctx context.Context, project string, req console.ReleaseRolloutRequest) (*release.Status, error) {
	var out release.Status
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/release-rollouts", req, &out)
}

// ReleaseRollout returns a release rollout with its progress.
func (c *Client) ReleaseRollout(ctx context.Context, project, id string) (*release.Status, error) {
	var out release.Status
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(project)+"/release-rollouts/"+url.PathEscape(id), nil, &out)
}

// ReleaseRolloutAction runs pause, resume or rollback on a release rollout.
func (c *Client) ReleaseRolloutAction(ctx context.Context, project, id, action string) (*release.Status, error) {
	var out release.Status
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/release-rollouts/"+url.PathEscape(id)+"/"+url.PathEscape(action), struct{}{}, &out)
}

// Versions counts a project's agents per version and platform.
func (c *Client) Versions(ctx context.Context, project string) (*release.Inventory, error) {
	var out release.Inventory
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(project)+"/versions", nil, &out)
}
