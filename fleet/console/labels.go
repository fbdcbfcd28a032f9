package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// agentLabelAttr prefixes the description attributes that carry an
// agent's own labels (internal/describe writes them; its token's are
// under store.TokenLabelAttr, noted by fleet/opamp).
const agentLabelAttr = "fleetprof.label."

// maxLabelAgents bounds the agents one labels request may change.
const maxLabelAgents = 1000

// LabelsRequest is the body of POST
// /api/v1/projects/{project}/agents/labels: set and remove custom labels
// on the agents named by IDs (at most 1000). Removing a label that is not
// a custom label of an agent leaves that agent's label alone.
type LabelsRequest struct {
	IDs    []string          `json:"ids"`
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// LabelsResult reports a labels request: the agents as they are now.
type LabelsResult struct {
	Updated int            `json:"updated"`
	Agents  []*store.Agent `json:"agents"`
}

// checkCustomLabel validates the name (and value) of a custom label.
func checkCustomLabel(k, v string) error {
	if slices.Contains(store.WellKnownLabels, k) {
		return fmt.Errorf("%w: labels: %q is a well-known label the agent reports (one of %s); it cannot be set", ErrBadRequest, k, strings.Join(store.WellKnownLabels, ", "))
	}
	return validLabel(k, v)
}

func (a *API) setLabels(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	var body LabelsRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	switch {
	case len(body.IDs) == 0:
		return nil, fmt.Errorf("%w: ids: name at least one agent", ErrBadRequest)
	case len(body.IDs) > maxLabelAgents:
		return nil, fmt.Errorf("%w: ids: at most %d agents at once, got %d", ErrBadRequest, maxLabelAgents, len(body.IDs))
	case len(body.Set) == 0 && len(body.Remove) == 0:
		return nil, fmt.Errorf("%w: set or remove at least one label", ErrBadRequest)
	}
	for k, v := range body.Set {
		if err := checkCustomLabel(k, v); err != nil {
			return nil, err
		}
	}
	for _, k := range body.Remove {
		if err := checkCustomLabel(k, ""); err != nil {
			return nil, err
		}
		if _, ok := body.Set[k]; ok {
			return nil, fmt.Errorf("%w: labels: %q is both set and removed", ErrBadRequest, k)
		}
	}
	// Every agent must be of this project before any changes.
	ids := slices.Compact(slices.Sorted(slices.Values(body.IDs)))
	for _, id := range ids {
		ag, err := a.o.Store.AgentByID(r.Context(), id)
		if err != nil || ag.ProjectID != p.ID {
			return nil, fmt.Errorf("agent %q: %w", id, store.ErrNotFound)
		}
	}
	res := &LabelsResult{Agents: []*store.Agent{}}
	var errs []error
	for _, id := range ids {
		ag, err := a.updateLabels(r.Context(), id, body.Set, body.Remove)
		if err != nil {
			errs = append(errs, fmt.Errorf("agent %s: %w", id, err))
			continue
		}
		res.Updated++
		a.shown(r.Context(), ag)
		res.Agents = append(res.Agents, ag)
	}
	err = errors.Join(errs...)
	a.audit(r, p.ID, "agents.labels", labelsTarget(ids, body), err)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// labelsTarget describes a labels request for the audit log.
func labelsTarget(ids []string, body LabelsRequest) string {
	var parts []string
	if len(body.Set) > 0 {
		kv := make([]string, 0, len(body.Set))
		for k, v := range body.Set {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		parts = append(parts, "set "+strings.Join(kv, ","))
	}
	if len(body.Remove) > 0 {
		parts = append(parts, "remove "+strings.Join(body.Remove, ","))
	}
	who := strings.Join(ids, ",")
	if len(ids) > 10 {
		who = strings.Join(ids[:10], ",") + fmt.Sprintf(",… (%d agents)", len(ids))
	}
	return strings.Join(parts, " ") + " on ids=" + who
}

// updateLabels applies set and remove to one agent's custom labels and
// its selector labels, retrying on a concurrent write of its record. A
// removed label falls back to what the agent's token or the agent itself
// says, as fleet/opamp merges them.
func (a *API) updateLabels(ctx context.Context, id string, set map[string]string, remove []string) (*store.Agent, error) {
	for range 5 {
		ag, err := a.o.Store.AgentByID(ctx, id)
		if err != nil {
			return nil, err
		}
		if ag.CustomLabels == nil {
			ag.CustomLabels = map[string]string{}
		}
		if ag.Labels == nil {
			ag.Labels = map[string]string{}
		}
		for k, v := range set {
			ag.CustomLabels[k] = v
			ag.Labels[k] = v
		}
		for _, k := range remove {
			if _, ok := ag.CustomLabels[k]; !ok {
				continue
			}
			delete(ag.CustomLabels, k)
			delete(ag.Labels, k)
			if v, ok := ag.Description[store.TokenLabelAttr+k]; ok {
				ag.Labels[k] = v
			} else if v, ok := ag.Description[agentLabelAttr+k]; ok {
				ag.Labels[k] = v
			}
		}
		if len(ag.CustomLabels) == 0 {
			ag.CustomLabels = nil
		}
		if err := a.o.Store.UpsertAgent(ctx, ag); !errors.Is(err, store.ErrConflict) {
			if err != nil {
				return nil, err
			}
			return ag, nil
		}
	}
	return nil, fmt.Errorf("label agent %s: %w", id, store.ErrConflict)
}
