package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// EventSource yields the current state of one topic of a project; the
// events stream sends it whenever its JSON changes. It is called about
// once a second per open stream and must be cheap and goroutine-safe.
type EventSource func(ctx context.Context, projectID string) (any, error)

// AddEventSource adds a topic to the live events of every project
// (GET /api/v1/projects/{project}/events, server-sent events). Polling
// the store each second keeps it correct across replicas; with a bus
// (Options.Bus) a change published by any replica is sent at once.
func (a *API) AddEventSource(topic string, f EventSource) {
	a.sourcesMu.Lock()
	defer a.sourcesMu.Unlock()
	if a.sources == nil {
		a.sources = map[string]EventSource{}
	}
	a.sources[topic] = f
}

func (a *API) eventSources() map[string]EventSource {
	a.sourcesMu.RLock()
	defer a.sourcesMu.RUnlock()
	out := map[string]EventSource{"agents": a.agentSummary, "rollouts": a.rolloutSummaries}
	for k, v := range a.sources {
		out[k] = v
	}
	return out
}

// AgentSummary is the "agents" event: counts by state and a digest of
// every agent's status, so a console refetches only on change.
type AgentSummary struct {
	Total  int            `json:"total"`
	Counts map[string]int `json:"counts"`
	// Agents maps id → state for small fleets (≤ 200 agents), so pages
	// can update rows in place; larger fleets get Digest alone.
	Agents map[string]string `json:"agents,omitempty"`
	Digest string            `json:"digest"`
}

func (a *API) agentSummary(ctx context.Context, projectID string) (any, error) {
	agents, err := a.o.Store.ListAgents(ctx, store.AgentFilter{ProjectID: projectID})
	if err != nil {
		return nil, err
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	s := &AgentSummary{Total: len(agents), Counts: map[string]int{}}
	if len(agents) <= 200 {
		s.Agents = map[string]string{}
	}
	var d uint64 = 14695981039346656037
	mix := func(v string) {
		for i := 0; i < len(v); i++ {
			d ^= uint64(v[i])
			d *= 1099511628211
		}
		d ^= 0xff
		d *= 1099511628211
	}
	for _, ag := range agents {
		st := AgentState(ag)
		s.Counts[st]++
		if s.Agents != nil {
			s.Agents[ag.ID] = st
		}
		mix(ag.ID)
		mix(st)
		mix(ag.ConfigStatus)
		mix(ag.ConfigHash)
		mix(ag.RotationStatus)
		mix(ag.CredentialID)
		mix(ag.Health)
		mix(ag.Version)
	}
	s.Digest = fmt.Sprintf("%016x", d)
	return s, nil
}

// events streams server-sent events: each topic's state at once, then
// again whenever it changes (checked every second and whenever a replica
// publishes the project on store.TopicChanged), and a comment every
// 15 s to keep proxies from closing the stream.
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		WriteError(w, a.log, r, fmt.Errorf("%w: streaming unsupported", ErrBadRequest))
		return
	}
	project := r.PathValue("project")
	if _, err := a.o.Store.ProjectByID(r.Context(), project); err != nil {
		WriteError(w, a.log, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprintf(w, "retry: 2000\n\n")
	fl.Flush()
	last := map[string][]byte{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var changed <-chan store.Event
	if a.o.Bus != nil {
		changed = a.o.Bus.Subscribe(r.Context(), store.TopicChanged)
	}
	quiet := 0
	for {
		sent := false
		for topic, src := range a.eventSources() {
			v, err := src(r.Context(), project)
			if err != nil {
				if r.Context().Err() != nil {
					return
				}
				a.log.Warn("event source", zap.String("topic", topic), zap.Error(err))
				continue
			}
			b, err := json.Marshal(v)
			if err != nil || bytes.Equal(b, last[topic]) {
				continue
			}
			last[topic] = b
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", topic, b); err != nil {
				return
			}
			sent = true
		}
		if !sent {
			quiet++
			if quiet >= 15 {
				quiet = 0
				if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
					return
				}
				sent = true
			}
		}
		if sent {
			fl.Flush()
		}
		if !a.waitChange(r.Context(), tick.C, changed, project) {
			return
		}
	}
}

// waitChange waits for the next tick or a change of project published on
// the bus, and reports false when ctx ended.
func (a *API) waitChange(ctx context.Context, tick <-chan time.Time, changed <-chan store.Event, project string) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick:
			return true
		case ev, ok := <-changed:
			if !ok {
				changed = nil
				continue
			}
			if ev.Resync || slices.Contains(ev.IDs, project) {
				return true
			}
		}
	}
}
