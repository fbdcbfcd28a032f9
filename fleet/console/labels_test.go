package console_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/release"
	"github.com/fleetprof/fleetprof/fleet/store"
)

// TestAgentLabels: editors set and remove custom labels on chosen agents;
// viewers, read-only callers and outsiders cannot; well-known labels and
// bad names are refused with 400 naming the label; selectors see the
// labels; removing one restores what the agent's token said; every
// request is audited.
func TestAgentLabels(t *testing.T) {
	e := newEnv(t)
	f := e.fixture()
	for _, ag := range []*store.Agent{
		{ID: "a1", ProjectID: f.projA, Hostname: "h1", Platform: "systemd", Connected: true, Healthy: true,
			Labels:      map[string]string{"platform": "systemd", "team": "perf"},
			Description: map[string]string{"fleetprof.token_label.team": "perf"}},
		{ID: "a2", ProjectID: f.projA, Hostname: "h2", Platform: "systemd", Labels: map[string]string{"platform": "systemd"}},
		{ID: "b1", ProjectID: f.projB, Hostname: "hb", Labels: map[string]string{}},
	} {
		if err := e.st.UpsertAgent(t.Context(), ag); err != nil {
			t.Fatal(err)
		}
	}
	path := "/api/v1/projects/" + f.projA + "/agents/labels"
	body := console.LabelsRequest{IDs: []string{"a1"}, Set: map[string]string{"tier": "gold"}}

	t.Run("roles", func(t *testing.T) {
		want := map[string]int{
			"viewer": 403, "read-only-admin": 403, "outsider": 403,
			"editor": 201, "admin": 201, "fleet-admin": 201,
		}
		for who, code := range want {
			if got, data := e.call(f.keys[who], "POST", path, body); got != code {
				t.Errorf("%s: HTTP %d %s, want %d", who, got, data, code)
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, c := range []struct {
			name string
			body any
			code int
			says string
		}{
			{"well-known", console.LabelsRequest{IDs: []string{"a1"}, Set: map[string]string{"platform": "x"}}, 400, `"platform"`},
			{"well-known removed", console.LabelsRequest{IDs: []string{"a1"}, Remove: []string{"hostname"}}, 400, `"hostname"`},
			{"bad name", console.LabelsRequest{IDs: []string{"a1"}, Set: map[string]string{"a b": "x"}}, 400, `"a b"`},
			{"long value", console.LabelsRequest{IDs: []string{"a1"}, Set: map[string]string{"k": strings.Repeat("v", 254)}}, 400, `"k"`},
			{"set and removed", console.LabelsRequest{IDs: []string{"a1"}, Set: map[string]string{"k": "v"}, Remove: []string{"k"}}, 400, `"k"`},
			{"nothing to do", console.LabelsRequest{IDs: []string{"a1"}}, 400, "set or remove"},
			{"no agents", console.LabelsRequest{Set: map[string]string{"k": "v"}}, 400, "ids"},
			{"unknown field", map[string]any{"ids": []string{"a1"}, "add": map[string]string{"k": "v"}}, 400, "unknown field"},
			{"agent of another project", console.LabelsRequest{IDs: []string{"a1", "b1"}, Set: map[string]string{"k": "v"}}, 404, `"b1"`},
			{"unknown agent", console.LabelsRequest{IDs: []string{"nope"}, Set: map[string]string{"k": "v"}}, 404, `"nope"`},
		} {
			code, msg := e.callErr(f.keys["editor"], "POST", path, c.body)
			if code != c.code || !strings.Contains(msg, c.says) {
				t.Errorf("%s: HTTP %d %q, want %d naming %s", c.name, code, msg, c.code, c.says)
			}
		}
		// A refused request changed nothing, not even on a1.
		ag, err := e.st.AgentByID(t.Context(), "a1")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := ag.CustomLabels["k"]; ok {
			t.Errorf("a refused request set k on a1: %v", ag.CustomLabels)
		}
	})

	t.Run("set, select, remove", func(t *testing.T) {
		var res console.LabelsResult
		e.mustCall(f.keys["editor"], "POST", path, console.LabelsRequest{IDs: []string{"a1", "a2", "a1"}, Set: map[string]string{"team": "web", "zone": "z1"}}, &res)
		if res.Updated != 2 {
			t.Errorf("updated %d agents, want 2 (a1 once)", res.Updated)
		}
		if got := e.selectIDs(f.projA, "team=web,zone=z1"); !cmp.Equal(got, []string{"a1", "a2"}) {
			t.Errorf("selector team=web,zone=z1 finds %v, want a1 a2", got)
		}
		// The custom label wins over the token's label.
		ag, _ := e.st.AgentByID(t.Context(), "a1")
		want := map[string]string{"tier": "gold", "team": "web", "zone": "z1"}
		if diff := cmp.Diff(want, ag.CustomLabels); diff != "" {
			t.Errorf("a1 custom labels (-want +got):\n%s", diff)
		}
		// Removing it brings back the token's label on a1, and drops it on a2.
		e.mustCall(f.keys["editor"], "POST", path, console.LabelsRequest{IDs: []string{"a1", "a2"}, Remove: []string{"team", "tier"}}, &res)
		if got := e.selectIDs(f.projA, "team=perf"); !cmp.Equal(got, []string{"a1"}) {
			t.Errorf("after removal, team=perf finds %v, want a1", got)
		}
		if got := e.selectIDs(f.projA, "team"); !cmp.Equal(got, []string{"a1"}) {
			t.Errorf("after removal, team finds %v, want a1 only", got)
		}
		ag, _ = e.st.AgentByID(t.Context(), "a2")
		if diff := cmp.Diff(map[string]string{"zone": "z1"}, ag.CustomLabels); diff != "" {
			t.Errorf("a2 custom labels (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]string{"platform": "systemd", "zone": "z1"}, ag.Labels); diff != "" {
			t.Errorf("a2 labels (-want +got):\n%s", diff)
		}
	})

	t.Run("audited", func(t *testing.T) {
		var es []store.AuditEntry
		e.mustCall(e.admin, "GET", "/api/v1/audit?project="+f.projA, nil, &es)
		ok, found := 0, false
		for _, x := range es {
			if x.Action == "agents.labels" && x.Result == "ok" {
				ok++
				found = found || x.Actor == "user:editor" && x.Target == "set team=web,zone=z1 on ids=a1,a2"
			}
		}
		// 3 from "roles", 2 from "set, select, remove"; refusals at
		// validation are not changes and are not audited.
		if ok != 5 || !found {
			t.Errorf("audit: %d ok agents.labels entries, want 5; the editor's set entry found: %v", ok, found)
		}
	})
}

// callErr is call for refusals: the status and the error message.
func (e *env) callErr(tok, method, path string, body any) (int, string) {
	e.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(string(b)))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var env console.Envelope
	_ = json.NewDecoder(resp.Body).Decode(&env)
	if env.Error == nil {
		return resp.StatusCode, ""
	}
	return resp.StatusCode, env.Error.Message
}

// selectIDs lists the ids of a project's agents a selector matches.
func (e *env) selectIDs(project, sel string) []string {
	e.t.Helper()
	var as []store.Agent
	e.mustCall(e.admin, "GET", "/api/v1/projects/"+project+"/agents?selector="+url.QueryEscape(sel), nil, &as)
	ids := []string{}
	for _, a := range as {
		ids = append(ids, a.ID)
	}
	return ids
}

// TestVersionsPageRoutes: what the console's Versions page calls, by
// role: everyone with access to the project reads the version counts,
// the release list and the release rollouts; only editors start one.
func TestVersionsPageRoutes(t *testing.T) {
	e := newEnv(t)
	f := e.fixture()
	m, err := release.New(release.Options{Store: e.st, DataDir: t.TempDir(), FleetURL: "http://fleet"})
	if err != nil {
		t.Fatal(err)
	}
	api := console.New(console.Options{Store: e.st, Auth: e.au, Fleet: &rotations{}, FleetURL: "http://fleet"})
	mux := http.NewServeMux()
	api.Register(mux)
	api.RegisterReleases(mux, m)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	e.url = srv.URL
	if _, err := m.Upload(t.Context(), "v1.2.0", "linux/amd64", strings.NewReader("agent binary"), "test"); err != nil {
		t.Fatal(err)
	}
	for _, ag := range []*store.Agent{
		{ID: "s1", ProjectID: f.projA, Platform: "systemd", Version: "v1.1.0", Connected: true, Labels: map[string]string{"platform": "systemd"}},
		{ID: "s2", ProjectID: f.projA, Platform: "systemd", Version: "v1.1.0", Labels: map[string]string{"platform": "systemd"}},
		{ID: "k1", ProjectID: f.projA, Platform: "kubernetes", Version: "v1.0.0", Connected: true,
			Labels: map[string]string{"platform": "kubernetes", "cluster": "east"}, Description: map[string]string{"container.image.name": "fleetprof/agent:v1.0.0"}},
	} {
		if err := e.st.UpsertAgent(t.Context(), ag); err != nil {
			t.Fatal(err)
		}
	}
	pa := "/api/v1/projects/" + f.projA
	calls := []struct {
		method, path string
		body         any
	}{
		{"GET", pa + "/versions", nil},
		{"GET", "/api/v1/releases", nil},
		{"GET", pa + "/release-rollouts", nil},
		{"POST", pa + "/release-rollouts", console.ReleaseRolloutRequest{Version: "v1.2.0", Selector: "platform=systemd", Canary: 1, WavePercent: 100, MaxFailurePercent: 10}},
		{"POST", "/api/v1/releases", console.RegisterReleaseRequest{Version: "v9", URL: "http://127.0.0.1:1/x"}},
	}
	want := map[string][]int{
		"viewer":          {200, 200, 200, 403, 403},
		"read-only-admin": {200, 200, 200, 403, 403},
		"outsider":        {403, 200, 403, 403, 403},
		"editor":          {200, 200, 200, 201, 403},
	}
	for who, codes := range want {
		var got []int
		for _, c := range calls {
			code, _ := e.call(f.keys[who], c.method, c.path, c.body)
			got = append(got, code)
		}
		if diff := cmp.Diff(codes, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", who, diff)
		}
	}
	var inv release.Inventory
	e.mustCall(f.keys["viewer"], "GET", pa+"/versions", nil, &inv)
	wantInv := release.Inventory{Total: 3, Versions: []*release.VersionCount{
		{Version: "v1.0.0", Platform: "kubernetes", Cluster: "east", Image: "fleetprof/agent:v1.0.0", ManagedBy: "DaemonSet", Agents: 1, Connected: 1},
		{Version: "v1.1.0", Platform: "systemd", ManagedBy: "fleet", Agents: 2, Connected: 1},
	}}
	if diff := cmp.Diff(wantInv, inv); diff != "" {
		t.Errorf("versions (-want +got):\n%s", diff)
	}
	var rs []store.ReleaseRollout
	e.mustCall(f.keys["viewer"], "GET", pa+"/release-rollouts", nil, &rs)
	if len(rs) != 1 || rs[0].Version != "v1.2.0" || rs[0].CreatedBy != "user:editor" {
		t.Errorf("release rollouts = %+v, want the editor's v1.2.0", rs)
	}
}
