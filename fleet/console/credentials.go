package console

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/token"
)

// KeyCloser is implemented by the OpAMP server: it cuts connections whose
// token was signed by a retired key.
type KeyCloser interface {
	CloseKey(kid string) int
}

func (a *API) registerCredentials(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/projects/{project}/agents/rotation", a.wrap(read, a.rotationStatus))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/revoke", a.wrap(write, a.revokeBulk))
	mux.HandleFunc("GET /api/v1/keys", a.wrap(read, a.listKeys))
	mux.HandleFunc("POST /api/v1/keys/rotate", a.wrap(write, a.rotateKey))
	mux.HandleFunc("POST /api/v1/keys/{kid}/retire", a.wrap(write, a.retireKey))
	mux.HandleFunc("POST /api/v1/admin-tokens", a.wrap(write, a.createAdminToken))
	mux.HandleFunc("POST /api/v1/projects/{project}/agents/{id}/readmit", a.wrap(write, a.readmitAgent))
}

// readmitAgent lets a revoked agent enroll again with a bootstrap token.
func (a *API) readmitAgent(r *http.Request) (any, error) {
	ag, err := a.agent(r)
	if err != nil {
		return nil, err
	}
	err = a.setRevoked(r.Context(), ag.ID, false)
	a.audit(r, ag.ProjectID, "agent.readmit", ag.ID, err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"id": ag.ID, "status": "readmitted"}, nil
}

func (a *API) createAdminToken(r *http.Request) (any, error) {
	var body struct {
		Name     string `json:"name"`
		ReadOnly bool   `json:"readOnly"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Name == "" || len(body.Name) > 100 {
		return nil, fmt.Errorf("%w: name: must be 1 to 100 characters", ErrBadRequest)
	}
	by := ""
	if p := PrincipalFrom(r.Context()); p != nil {
		by = p.Name
	}
	raw, t, err := a.o.Auth.Issue(r.Context(), auth.IssueRequest{Kind: token.KindAdmin, Name: body.Name, ReadOnly: body.ReadOnly, CreatedBy: by})
	a.audit(r, "", "admin-token.create", body.Name, err)
	if err != nil {
		return nil, err
	}
	return &CreatedToken{Token: raw, Info: t}, nil
}

// RotationStatus counts the agents of a selector by rotation state.
type RotationStatus struct {
	Selected int               `json:"selected"`
	Pending  int               `json:"pending"`
	Rotated  int               `json:"rotated"`
	Failed   int               `json:"failed"`
	Errors   map[string]string `json:"errors,omitempty"` // agent → why its rotation failed
}

func (a *API) rotationStatus(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	agents, err := a.selected(r, p.ID, r.URL.Query().Get("selector"))
	if err != nil {
		return nil, err
	}
	st := &RotationStatus{Selected: len(agents)}
	for _, ag := range agents {
		switch ag.RotationStatus {
		case "pending":
			st.Pending++
		case "rotated":
			st.Rotated++
		case "failed":
			st.Failed++
			if st.Errors == nil {
				st.Errors = map[string]string{}
			}
			st.Errors[ag.ID] = ag.RotationError
		}
	}
	return st, nil
}

// RevokeResult reports a bulk revocation.
type RevokeResult struct {
	Selected int      `json:"selected"`
	Revoked  int      `json:"revoked"`
	Failed   []string `json:"failed,omitempty"`
}

func (a *API) revokeBulk(r *http.Request) (any, error) {
	p, err := a.project(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Selector string `json:"selector"`
	}
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	if body.Selector == "" {
		return nil, fmt.Errorf("%w: selector: required (revoking every agent needs an explicit selector such as platform)", ErrBadRequest)
	}
	agents, err := a.selected(r, p.ID, body.Selector)
	if err != nil {
		return nil, err
	}
	res := &RevokeResult{Selected: len(agents)}
	for _, ag := range agents {
		if err := a.revokeAgentCredentials(r.Context(), ag); err != nil {
			res.Failed = append(res.Failed, ag.ID+": "+err.Error())
			continue
		}
		res.Revoked++
	}
	a.audit(r, p.ID, "agents.revoke", body.Selector, nil)
	return res, nil
}

func (a *API) listKeys(r *http.Request) (any, error) {
	ks := a.o.Auth.Keys()
	return map[string]any{"active": ks.ActiveID(), "keys": ks.Keys()}, nil
}

func (a *API) rotateKey(r *http.Request) (any, error) {
	k, err := a.o.Auth.Keys().Rotate()
	a.audit(r, "", "keys.rotate", "", err)
	if err != nil {
		return nil, err
	}
	return map[string]string{"active": k.ID}, nil
}

func (a *API) retireKey(r *http.Request) (any, error) {
	kid := r.PathValue("kid")
	if p := PrincipalFrom(r.Context()); p != nil {
		if t, err := a.o.Store.TokenByID(r.Context(), p.TokenID); err == nil && t.KeyID == kid {
			return nil, fmt.Errorf("%w: your own admin token is signed by key %s; create a new admin token (fleetprof admin-token create) and retire the key with it", ErrBadRequest, kid)
		}
	}
	err := a.o.Auth.Keys().Retire(kid)
	if errors.Is(err, token.ErrUnknownKey) {
		err = fmt.Errorf("key %q: %w", kid, store.ErrNotFound)
	} else if err != nil {
		err = fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	a.audit(r, "", "keys.retire", kid, err)
	if err != nil {
		return nil, err
	}
	closed := 0
	if kc, ok := a.o.Fleet.(KeyCloser); ok {
		closed = kc.CloseKey(kid)
	}
	return map[string]any{"retired": kid, "connectionsClosed": closed}, nil
}
