package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// Client talks to one fleet with one admin token.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// New returns a client for the fleet at baseURL. hc nil means a client
// with a 60s timeout.
func New(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), token: token, hc: hc}
}

// APIError is an error envelope returned by the fleet.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// Do sends a request and decodes the envelope's data into out.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	var env struct {
		Data  json.RawMessage    `json:"data"`
		Error *console.ErrorBody `json:"error"`
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return &APIError{Status: resp.StatusCode, Code: "bad_response", Message: strings.TrimSpace(string(b))}
	}
	if env.Error != nil || resp.StatusCode >= 400 {
		e := &APIError{Status: resp.StatusCode}
		if env.Error != nil {
			e.Code, e.Message = env.Error.Code, env.Error.Message
		}
		return e
	}
	if out != nil && len(env.Data) > 0 {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

// Raw performs a GET and returns the body as is (pprof downloads).
func (c *Client) Raw(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 400 {
		var env console.Envelope
		if json.Unmarshal(b, &env) == nil && env.Error != nil {
			return nil, &APIError{Status: resp.StatusCode, Code: env.Error.Code, Message: env.Error.Message}
		}
		return nil, &APIError{Status: resp.StatusCode, Code: "error", Message: strings.TrimSpace(string(b))}
	}
	return b, nil
}

// CreateProject creates a project.
func (c *Client) CreateProject(ctx context.Context, name string) (*store.Project, error) {
	var p store.Project
	return &p, c.Do(ctx, http.MethodPost, "/api/v1/projects", map[string]string{"name": name}, &p)
}

// ListProjects lists projects.
func (c *Client) ListProjects(ctx context.Context) ([]*store.Project, error) {
	var ps []*store.Project
	return ps, c.Do(ctx, http.MethodGet, "/api/v1/projects", nil, &ps)
}

// CreateToken creates a token; the result holds the JWT (shown once).
func (c *Client) CreateToken(ctx context.Context, project string, req console.CreateTokenRequest) (*console.CreatedToken, error) {
	var t console.CreatedToken
	return &t, c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/tokens", req, &t)
}

// ListTokens lists a project's tokens.
func (c *Client) ListTokens(ctx context.Context, project string) ([]*store.Token, error) {
	var ts []*store.Token
	return ts, c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(project)+"/tokens", nil, &ts)
}

// DeleteToken revokes a token.
func (c *Client) DeleteToken(ctx context.Context, project, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/projects/"+url.PathEscape(project)+"/tokens/"+url.PathEscape(id), nil, nil)
}

// ListAgents lists agents (of one project when project != "").
func (c *Client) ListAgents(ctx context.Context, project, selector string) ([]*store.Agent, error) {
	q := url.Values{}
	if project != "" {
		q.Set("project", project)
	}
	if selector != "" {
		q.Set("selector", selector)
	}
	var as []*store.Agent
	return as, c.Do(ctx, http.MethodGet, "/api/v1/agents?"+q.Encode(), nil, &as)
}

// RevokeAgent revokes every credential of an agent.
func (c *Client) RevokeAgent(ctx context.Context, project, id string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/agents/"+url.PathEscape(id)+"/revoke", struct{}{}, nil)
}

// RotateCredentials starts credential rotation for the agents a selector picks.
func (c *Client) RotateCredentials(ctx context.Context, project, selector string) (*console.RotateResult, error) {
	var r console.RotateResult
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(project)+"/agents/rotate-credentials", map[string]string{"selector": selector}, &r)
}

// Audit lists the audit log.
func (c *Client) Audit(ctx context.Context, project string, limit int) ([]*store.AuditEntry, error) {
	var es []*store.AuditEntry
	return es, c.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/audit?project=%s&limit=%d", url.QueryEscape(project), limit), nil, &es)
}
