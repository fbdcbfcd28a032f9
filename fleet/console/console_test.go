package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/auth"
	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/token"
)

// rotations is a logic fake of the OpAMP side: it records rotations.
type rotations struct {
	mu  sync.Mutex
	ids []string
}

func (r *rotations) RotateCredential(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, id)
	return nil
}

type env struct {
	t     *testing.T
	url   string
	st    *sqlite.Store
	au    *auth.Authenticator
	bus   *store.LocalBus
	admin string // admin JWT
}

func newEnv(t *testing.T) *env {
	t.Helper()
	keys, err := token.OpenKeySet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(t.Context(), t.TempDir()+"/fleet.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	au, err := auth.New(t.Context(), auth.Options{Keys: keys, Store: st, Issuer: "http://fleet"})
	if err != nil {
		t.Fatal(err)
	}
	bus := &store.LocalBus{}
	api := console.New(console.Options{Store: st, Auth: au, Fleet: &rotations{}, FleetURL: "http://fleet", Bus: bus})
	mux := http.NewServeMux()
	api.Register(mux)
	api.RegisterUI(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	raw, _, err := au.Issue(t.Context(), auth.IssueRequest{Kind: token.KindAdmin, Name: "root"})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: srv.URL, st: st, au: au, bus: bus, admin: raw}
}

// call sends a request with a bearer token (or none) and returns the
// status and the envelope's data.
func (e *env) call(tok, method, path string, body any) (int, json.RawMessage) {
	e.t.Helper()
	return e.do(http.DefaultClient, tok, "", method, path, body)
}

func (e *env) do(hc *http.Client, tok, csrf, method, path string, body any) (int, json.RawMessage) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if csrf != "" {
		req.Header.Set(console.CSRFHeader, csrf)
	}
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &env)
	return resp.StatusCode, env.Data
}

func (e *env) mustCall(tok, method, path string, body, out any) {
	e.t.Helper()
	code, data := e.call(tok, method, path, body)
	if code >= 300 {
		e.t.Fatalf("%s %s: HTTP %d %s", method, path, code, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

type fixture struct {
	orgA, orgB, projA, projB string
	keys                     map[string]string // role name → access key
	readOnlyAdmin            string
}

func (e *env) fixture() *fixture {
	e.t.Helper()
	f := &fixture{keys: map[string]string{}}
	var o struct{ ID string }
	e.mustCall(e.admin, "POST", "/api/v1/orgs", map[string]string{"name": "A"}, &o)
	f.orgA = o.ID
	e.mustCall(e.admin, "POST", "/api/v1/orgs", map[string]string{"name": "B"}, &o)
	f.orgB = o.ID
	var p struct{ ID string }
	e.mustCall(e.admin, "POST", "/api/v1/projects", map[string]string{"name": "pa", "orgId": f.orgA}, &p)
	f.projA = p.ID
	e.mustCall(e.admin, "POST", "/api/v1/projects", map[string]string{"name": "pb", "orgId": f.orgB}, &p)
	f.projB = p.ID
	for _, u := range []struct{ name, org, role string }{
		{"viewer", f.orgA, "viewer"}, {"editor", f.orgA, "editor"}, {"admin", f.orgA, "admin"}, {"outsider", f.orgB, "admin"},
	} {
		var cu console.CreatedUser
		e.mustCall(e.admin, "POST", "/api/v1/users", console.CreateUserRequest{Name: u.name, OrgID: u.org, Role: store.Role(u.role)}, &cu)
		f.keys[u.name] = cu.Key
	}
	raw, _, err := e.au.Issue(e.t.Context(), auth.IssueRequest{Kind: token.KindAdmin, Name: "ro", ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	f.readOnlyAdmin = raw
	f.keys["fleet-admin"] = e.admin
	f.keys["read-only-admin"] = raw
	return f
}

// TestRoles checks every kind of API call against every role: viewers
// read, editors also create tokens, rotate and delete, admins also manage
// members, outsiders see nothing of another organization.
func TestRoles(t *testing.T) {
	e := newEnv(t)
	f := e.fixture()
	eff, err := config.Parse([]byte("sampling: {frequency_hz: 29}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ag := &store.Agent{ID: "agent-1", ProjectID: f.projA, Hostname: "h1", Labels: map[string]string{"cluster": "east"}, Connected: true, Healthy: true,
		CredentialID: "c1", CredentialHash: "0f0f0f0f", EffectiveConfig: string(eff.JSON())}
	if err := e.st.UpsertAgent(t.Context(), ag); err != nil {
		t.Fatal(err)
	}
	pa := "/api/v1/projects/" + f.projA
	// The recorded hash of an agent's credential is never shown, and the
	// effective config the agent reported as JSON shows as YAML.
	for _, path := range []string{pa + "/agents", pa + "/agents?limit=10", pa + "/agents/agent-1", "/api/v1/agents"} {
		code, body := e.call(f.keys["admin"], "GET", path, nil)
		if code != 200 || !strings.Contains(string(body), `"credentialId":"c1"`) || strings.Contains(string(body), "0f0f0f0f") || strings.Contains(string(body), "credentialHash") {
			t.Errorf("GET %s: HTTP %d %s; want the agent without its credential hash", path, code, body)
		}
		if !strings.Contains(string(body), `sampling:\n  frequency_hz: 29\n  duration: 10s\n`) {
			t.Errorf("GET %s: %s; want the effective config as YAML", path, body)
		}
	}
	// An effective config recorded by reference to a config version
	// shows as that version's YAML.
	ref, err := config.Parse([]byte("sampling: {frequency_hz: 31}\n"))
	if err != nil {
		t.Fatal(err)
	}
	refYAML, err := ref.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.CreateConfigVersion(t.Context(), &store.ConfigVersion{ID: "cv31", ProjectID: f.projA, Hash: ref.HashString(), YAML: string(refYAML), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.UpsertAgent(t.Context(), &store.Agent{ID: "agent-2", ProjectID: f.projA, Labels: map[string]string{}, EffectiveConfigHash: ref.HashString()}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{pa + "/agents/agent-2", pa + "/agents"} {
		code, body := e.call(f.keys["admin"], "GET", path, nil)
		if code != 200 || !strings.Contains(string(body), `sampling:\n  frequency_hz: 31\n  duration: 10s\n`) {
			t.Errorf("GET %s: HTTP %d %s; want the referenced version's YAML", path, code, body)
		}
	}
	calls := []struct {
		name         string
		method, path string
		body         any
	}{
		{"list projects", "GET", "/api/v1/projects", nil},
		{"get project", "GET", pa, nil},
		{"list tokens", "GET", pa + "/tokens", nil},
		{"create token", "POST", pa + "/tokens", map[string]string{"name": "t", "scope": "write-profiles"}},
		{"delete token", "DELETE", pa + "/tokens/nope", nil},
		{"list agents", "GET", pa + "/agents", nil},
		{"get agent", "GET", pa + "/agents/agent-1", nil},
		{"rotate agent", "POST", pa + "/agents/agent-1/rotate", nil},
		{"rotate bulk", "POST", pa + "/agents/rotate-credentials", map[string]any{"ids": []string{"agent-1"}}},
		{"revoke agent", "POST", pa + "/agents/nope/revoke", nil},
		{"audit of project", "GET", "/api/v1/audit?project=" + f.projA, nil},
		{"create project in A", "POST", "/api/v1/projects", map[string]string{"name": "new-$who", "orgId": f.orgA}},
		{"set member in A", "PUT", "/api/v1/orgs/" + f.orgA + "/members/nobody", map[string]string{"role": ""}},
		{"create user in A", "POST", "/api/v1/users", map[string]string{"name": "user-$who", "orgId": f.orgA, "role": "viewer"}},
		{"delete user", "DELETE", "/api/v1/users/nobody", nil},
		{"move project", "PUT", pa + "/org", map[string]string{"orgId": f.orgA}},
	}
	// 2xx, 400 and 404 mean "allowed" (the handler ran); 403 refused.
	want := map[string][]int{
		"viewer":          {200, 200, 200, 403, 403, 200, 200, 403, 403, 403, 200, 403, 403, 403, 403, 403},
		"editor":          {200, 200, 200, 201, 404, 200, 200, 201, 201, 404, 200, 201, 403, 403, 403, 403},
		"admin":           {200, 200, 200, 201, 404, 200, 200, 201, 201, 404, 200, 201, 200, 201, 403, 403},
		"outsider":        {200, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403},
		"read-only-admin": {200, 200, 200, 403, 403, 200, 200, 403, 403, 403, 200, 403, 403, 403, 403, 403},
		"fleet-admin":     {200, 200, 200, 201, 404, 200, 200, 201, 201, 404, 200, 201, 200, 201, 404, 200},
	}
	for who, codes := range want {
		t.Run(who, func(t *testing.T) {
			var got []int
			for _, c := range calls {
				body := c.body
				if m, ok := body.(map[string]string); ok {
					m2 := map[string]string{}
					for k, v := range m {
						m2[k] = strings.ReplaceAll(v, "$who", who)
					}
					body = m2
				}
				code, _ := e.call(f.keys[who], c.method, c.path, body)
				got = append(got, code)
			}
			if diff := cmp.Diff(codes, got); diff != "" {
				for i, c := range calls {
					if codes[i] != got[i] {
						t.Errorf("%s %s (%s): got %d, want %d", c.method, c.path, c.name, got[i], codes[i])
					}
				}
			}
		})
	}
	// Visibility: the outsider lists only its own organization's project.
	var ps []console.ProjectInfo
	e.mustCall(f.keys["outsider"], "GET", "/api/v1/projects", nil, &ps)
	if len(ps) != 1 || ps[0].ID != f.projB {
		t.Errorf("outsider sees %d projects, want only pb", len(ps))
	}
	var as []store.Agent
	e.mustCall(f.keys["outsider"], "GET", "/api/v1/agents", nil, &as)
	if len(as) != 0 {
		t.Errorf("outsider lists %d agents of another organization", len(as))
	}
}

// TestSessions: sign-in sets an HttpOnly SameSite=Strict cookie; unsafe
// requests need the CSRF header; sign-out and deleting the admin token
// end the session.
func TestSessions(t *testing.T) {
	e := newEnv(t)
	f := e.fixture()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}

	if code, _ := e.do(hc, "", "", "POST", "/api/v1/session", map[string]string{"token": "fpu_wrong"}); code != 401 {
		t.Fatalf("sign-in with a wrong key: %d, want 401", code)
	}
	req, _ := http.NewRequest("POST", e.url+"/api/v1/session", strings.NewReader(`{"token":"`+f.keys["editor"]+`"}`))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var signed struct{ Data console.SessionInfo }
	_ = json.NewDecoder(resp.Body).Decode(&signed)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Name != console.SessionCookie {
		t.Fatalf("cookie = %+v, want one HttpOnly SameSite=Strict session cookie", ck)
	}
	if signed.Data.CSRF == "" || signed.Data.Roles[f.orgA] != store.RoleEditor {
		t.Fatalf("session info = %+v", signed.Data)
	}
	csrf := signed.Data.CSRF
	pa := "/api/v1/projects/" + f.projA + "/tokens"
	body := map[string]string{"name": "x", "scope": "write-profiles"}
	if code, _ := e.do(hc, "", "", "GET", pa, nil); code != 200 {
		t.Errorf("GET with the cookie: %d", code)
	}
	if code, _ := e.do(hc, "", "", "POST", pa, body); code != 403 {
		t.Errorf("POST without CSRF header: %d, want 403", code)
	}
	if code, _ := e.do(hc, "", "wrong", "POST", pa, body); code != 403 {
		t.Errorf("POST with a wrong CSRF header: %d, want 403", code)
	}
	if code, _ := e.do(hc, "", csrf, "POST", pa, body); code != 201 {
		t.Errorf("POST with the CSRF header: %d, want 201", code)
	}
	if code, _ := e.do(hc, "", csrf, "DELETE", "/api/v1/session", nil); code != 200 {
		t.Errorf("sign out: %d", code)
	}
	// The cookie jar dropped it; replaying the old cookie fails too.
	req, _ = http.NewRequest("GET", e.url+pa, nil)
	req.AddCookie(ck[0])
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("old session cookie after sign-out: %d, want 401", resp.StatusCode)
	}

	// An admin-token session ends when that token is deleted.
	jar2, _ := cookiejar.New(nil)
	hc2 := &http.Client{Jar: jar2}
	if code, _ := e.do(hc2, "", "", "POST", "/api/v1/session", map[string]string{"token": f.readOnlyAdmin}); code != 201 {
		t.Fatalf("sign-in with the read-only admin token: %d", code)
	}
	if code, _ := e.do(hc2, "", "", "GET", "/api/v1/projects", nil); code != 200 {
		t.Fatalf("session GET: %d", code)
	}
	c, err := e.au.Keys().Verify(f.readOnlyAdmin, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.au.Revoke(t.Context(), c.ID); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.do(hc2, "", "", "GET", "/api/v1/projects", nil); code != 401 {
		t.Errorf("session of a deleted admin token: %d, want 401", code)
	}
}

// TestAgentPaging: limit/offset/sort/status over many agents.
func TestAgentPaging(t *testing.T) {
	e := newEnv(t)
	var p struct{ ID string }
	e.mustCall(e.admin, "POST", "/api/v1/projects", map[string]string{"name": "p"}, &p)
	for i := range 120 {
		a := &store.Agent{ID: fmt.Sprintf("a%03d", i), ProjectID: p.ID, Hostname: fmt.Sprintf("host-%03d", 119-i),
			Connected: i%3 != 0, Healthy: true, Labels: map[string]string{"zone": []string{"a", "b"}[i%2]}}
		if err := e.st.UpsertAgent(t.Context(), a); err != nil {
			t.Fatal(err)
		}
	}
	base := "/api/v1/projects/" + p.ID + "/agents"
	var page console.AgentPage
	e.mustCall(e.admin, "GET", base+"?limit=10&offset=20&sort=hostname", nil, &page)
	var got []string
	for _, it := range page.Items {
		got = append(got, it.Hostname)
	}
	want := []string{"host-020", "host-021", "host-022", "host-023", "host-024", "host-025", "host-026", "host-027", "host-028", "host-029"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("page 3 by hostname (-want +got):\n%s", diff)
	}
	if page.Total != 120 || page.Counts["disconnected"] != 40 || page.Counts["connected"] != 80 {
		t.Errorf("total %d counts %v, want 120 / 40 disconnected / 80 connected", page.Total, page.Counts)
	}
	e.mustCall(e.admin, "GET", base+"?limit=5&sort=-hostname&status=disconnected&selector=zone%3Da", nil, &page)
	if page.Total != 20 || len(page.Items) != 5 || page.Items[0].State != "disconnected" || page.Items[0].Labels["zone"] != "a" {
		t.Errorf("filtered page: total %d, %d items, first %+v", page.Total, len(page.Items), page.Items[0])
	}
	if page.Items[0].Hostname < page.Items[1].Hostname {
		t.Errorf("-hostname is not descending: %s, %s", page.Items[0].Hostname, page.Items[1].Hostname)
	}
	if code, _ := e.call(e.admin, "GET", base+"?limit=5&sort=color", nil); code != 400 {
		t.Errorf("unknown sort field: %d, want 400", code)
	}
	// Without paging parameters the route keeps its array form (the CLI).
	var all []store.Agent
	e.mustCall(e.admin, "GET", base, nil, &all)
	if len(all) != 120 {
		t.Errorf("array form: %d agents", len(all))
	}
}

// TestEvents: the event stream sends the agent summary at once and again
// when an agent changes.
func TestEvents(t *testing.T) {
	e := newEnv(t)
	var p struct{ ID string }
	e.mustCall(e.admin, "POST", "/api/v1/projects", map[string]string{"name": "p"}, &p)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/api/v1/projects/"+p.ID+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	next := func() console.AgentSummary {
		t.Helper()
		event := ""
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				event = v
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok && event == "agents" {
				var s console.AgentSummary
				if err := json.Unmarshal([]byte(v), &s); err != nil {
					t.Fatal(err)
				}
				return s
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return console.AgentSummary{}
	}
	if s := next(); s.Total != 0 {
		t.Fatalf("first event total %d, want 0", s.Total)
	}
	start := time.Now()
	if err := e.st.UpsertAgent(t.Context(), &store.Agent{ID: "x", ProjectID: p.ID, Connected: true, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	s := next()
	if s.Total != 1 || s.Counts["connected"] != 1 || s.Agents["x"] != "connected" {
		t.Fatalf("after enrollment: %+v", s)
	}
	t.Logf("change reached the stream after %s", time.Since(start))

	// A change published on the bus (by any replica) is sent at once,
	// not at the next one-second poll: the stream polled just now.
	time.Sleep(100 * time.Millisecond)
	if err := e.st.UpsertAgent(t.Context(), &store.Agent{ID: "y", ProjectID: p.ID, Connected: true, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := e.bus.Publish(t.Context(), store.TopicChanged, "another-project", p.ID); err != nil {
		t.Fatal(err)
	}
	s = next()
	if took := time.Since(start); s.Agents["y"] != "connected" || took > 500*time.Millisecond {
		t.Fatalf("after a published change: %+v after %s, want agent y within 500ms", s, took)
	} else {
		t.Logf("published change reached the stream after %s", took)
	}
}

// TestUI serves the console page and assets with a strict CSP.
func TestUI(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/", "/assets/app.js", "/assets/style.css", "/assets/flame.js"} {
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Errorf("GET %s: %d, %d bytes", path, resp.StatusCode, len(b))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
	}
	if resp, _ := http.Get(e.url + "/assets/nope.js"); resp.StatusCode != 404 {
		t.Errorf("missing asset: %d", resp.StatusCode)
	}
}

// TestFleetWideRoutes: routes without a project that act on the whole
// fleet (signing keys) are for fleet admins only.
func TestFleetWideRoutes(t *testing.T) {
	e := newEnv(t)
	f := e.fixture()
	for who, want := range map[string]int{"admin": 403, "editor": 403, "viewer": 403, "fleet-admin": 200} {
		if code, _ := e.call(f.keys[who], "GET", "/api/v1/keys", nil); code != want {
			t.Errorf("%s: GET /api/v1/keys = %d, want %d", who, code, want)
		}
	}
	if code, _ := e.call(f.keys["admin"], "POST", "/api/v1/keys/rotate", nil); code != 403 {
		t.Errorf("org admin rotating the signing key: %d, want 403", code)
	}
}

// TestCheckConfig: validation errors come back one per field with their
// YAML paths, for the editor to show at the field.
func TestCheckConfig(t *testing.T) {
	got := console.CheckConfig("sampling:\n  frequency_hz: 100000\n  duration: 10s\n")
	if got.Valid || len(got.Errors) != 1 || got.Errors[0].Path != "sampling.frequency_hz" {
		t.Errorf("bad frequency: %+v", got)
	}
	got = console.CheckConfig("sampling: [\n")
	if got.Valid || len(got.Errors) != 1 || got.Errors[0].Path != "" {
		t.Errorf("syntax error: %+v", got)
	}
	got = console.CheckConfig("sampling:\n  frequency_hz: 29\n")
	if !got.Valid || got.Hash == "" || !strings.Contains(got.Canonical, "frequency_hz: 29") {
		t.Errorf("valid config: %+v", got)
	}
	e := newEnv(t)
	var p struct{ ID string }
	e.mustCall(e.admin, "POST", "/api/v1/projects", map[string]string{"name": "p"}, &p)
	if err := e.st.UpsertAgent(t.Context(), &store.Agent{ID: "a", ProjectID: p.ID, Labels: map[string]string{"cluster": "east"}}); err != nil {
		t.Fatal(err)
	}
	var res struct {
		Valid    bool
		Matching int
	}
	e.mustCall(e.admin, "POST", "/api/v1/projects/"+p.ID+"/configs/validate", map[string]string{"yaml": "", "selector": "cluster=east"}, &res)
	if !res.Valid || res.Matching != 1 {
		t.Errorf("validate with selector: %+v", res)
	}
}
