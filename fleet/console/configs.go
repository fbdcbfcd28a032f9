package console

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/selector"
)

// FieldError is one problem of a config document, at its YAML path.
type FieldError struct {
	Path   string `json:"path"` // "" for syntax errors
	Reason string `json:"reason"`
}

// ConfigCheck is the answer of the config validation route.
type ConfigCheck struct {
	Valid  bool         `json:"valid"`
	Errors []FieldError `json:"errors"`
	// Canonical is the normalized document when it is valid.
	Canonical string `json:"canonical,omitempty"`
	Hash      string `json:"hash,omitempty"`
}

// CheckConfig validates a remote-config document and splits its errors
// by field, for the console's editor.
func CheckConfig(yaml string) *ConfigCheck {
	out := &ConfigCheck{Errors: []FieldError{}}
	c, err := config.Parse([]byte(yaml))
	if err != nil {
		var joined interface{ Unwrap() []error }
		errs := []error{err}
		if !errors.Is(err, config.ErrSyntax) && errors.As(err, &joined) {
			errs = joined.Unwrap()
		}
		for _, e := range errs {
			var ve *config.ValidationError
			if errors.As(e, &ve) {
				out.Errors = append(out.Errors, FieldError{Path: ve.Path, Reason: ve.Reason})
			} else {
				out.Errors = append(out.Errors, FieldError{Reason: e.Error()})
			}
		}
		return out
	}
	out.Valid = true
	if b, err := c.Marshal(); err == nil {
		out.Canonical = string(b)
	}
	out.Hash = c.HashString()
	return out
}

func (a *API) checkConfig(r *http.Request) (any, error) {
	var body struct {
		YAML     string `json:"yaml"`
		Selector string `json:"selector,omitempty"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	res := struct {
		*ConfigCheck
		SelectorError string `json:"selectorError,omitempty"`
		Matching      int    `json:"matching"` // agents the selector picks now
	}{ConfigCheck: CheckConfig(body.YAML)}
	sel, err := selector.Parse(body.Selector)
	if err != nil {
		res.SelectorError = err.Error()
		return res, nil
	}
	agents, err := a.o.Store.ListAgents(r.Context(), store.AgentFilter{ProjectID: r.PathValue("project"), Match: func(ag *store.Agent) bool {
		return sel.Matches(ag.Labels)
	}})
	if err != nil {
		return nil, err
	}
	res.Matching = len(agents)
	return res, nil
}

// RolloutSummary is the "rollouts" event: each rollout's state and its
// agents by state, so the console refreshes progress live.
type RolloutSummary struct {
	ID     string         `json:"id"`
	Status string         `json:"status"`
	Stage  int            `json:"stage"`
	Reason string         `json:"reason,omitempty"`
	Counts map[string]int `json:"counts"`
}

// rolloutSummaries feeds the "rollouts" topic from the store: the 20
// newest rollouts, with agent counts for the ones still moving.
func (a *API) rolloutSummaries(ctx context.Context, projectID string) (any, error) {
	rs, err := a.o.Store.ListRollouts(ctx, store.RolloutFilter{ProjectID: projectID})
	if err != nil {
		return nil, err
	}
	out := []*RolloutSummary{}
	for i, ro := range rs {
		if i >= 20 {
			break
		}
		s := &RolloutSummary{ID: ro.ID, Status: ro.Status, Stage: ro.Stage, Reason: ro.Reason, Counts: map[string]int{}}
		if i < 5 || !strings.Contains("completed rolled_back", ro.Status) {
			counts, err := a.o.Store.CountRolloutAgents(ctx, ro.ID)
			if err != nil {
				return nil, err
			}
			for _, n := range counts {
				s.Counts[n.State] += n.N
			}
		}
		out = append(out, s)
	}
	return out, nil
}
