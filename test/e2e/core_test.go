package e2e

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/token"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

func agents(t *testing.T, f *fleettest.Fleet, project string) []*store.Agent {
	t.Helper()
	out, err := f.CLI("agents", "list", "--project", project, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var as []*store.Agent
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		t.Fatalf("agents list -o json: %v\n%s", err, out)
	}
	return as
}

func waitConnected(t *testing.T, f *fleettest.Fleet, project, id string, want bool, within time.Duration) *store.Agent {
	t.Helper()
	var got *store.Agent
	fleettest.Eventually(t, within, "agent connected="+map[bool]string{true: "true", false: "false"}[want], func() (bool, string) {
		for _, a := range agents(t, f, project) {
			if id == "" || a.ID == id {
				got = a
				ok := a.Connected == want
				if want {
					ok = ok && a.CredentialID != "" && a.PendingCredentialID == ""
				}
				b, _ := json.Marshal(a)
				return ok, string(b)
			}
		}
		return false, "no agent listed"
	})
	return got
}

// TestEnrollRestartRevoke is the core end-to-end path of the fleet with
// the real binaries: enroll with a bootstrap JWT, get an own credential,
// survive restarts of agent and fleet, lose access when revoked.
func TestEnrollRestartRevoke(t *testing.T) {
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "e2e")
	if len(project) != 36 {
		t.Fatalf("project create printed %q, want a uuid", project)
	}
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll", "--labels", "cluster=east,team=perf")
	if strings.Count(boot, ".") != 2 {
		t.Fatalf("token create printed %q, want a JWT alone", boot)
	}
	start := time.Now()
	ag := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", "node-a", "--platform", "systemd")
	a := waitConnected(t, f, project, "", true, 10*time.Second)
	t.Logf("enrolled and connected with own credential in %s", time.Since(start))
	if a.Labels["cluster"] != "east" || a.Labels["team"] != "perf" || a.Labels["platform"] != "systemd" || a.Labels["node"] != "node-a" {
		t.Errorf("labels = %v, want token labels plus platform/node", a.Labels)
	}
	if a.CredentialExpiresAt == nil || time.Until(*a.CredentialExpiresAt) < 23*time.Hour {
		t.Errorf("credential expiry = %v, want ~24h", a.CredentialExpiresAt)
	}
	st, err := os.Stat(filepath.Join(ag.StateDir, "credential"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("credential file mode %v, want 0600", st.Mode().Perm())
	}
	cred, _ := os.ReadFile(filepath.Join(ag.StateDir, "credential"))
	if strings.TrimSpace(string(cred)) == boot {
		t.Fatal("agent stored the bootstrap token as its credential")
	}

	// Restart without the bootstrap token: the stored credential is enough.
	ag.Stop()
	waitConnected(t, f, project, a.ID, false, 10*time.Second)
	ag2 := fleettest.StartAgent(t, ag.StateDir, "--fleet-address", f.URL, "--insecure", "--node", "node-a", "--platform", "systemd")
	b := waitConnected(t, f, project, a.ID, true, 10*time.Second)
	if b.CredentialID != a.CredentialID {
		t.Errorf("credential changed across agent restart: %s → %s", a.CredentialID, b.CredentialID)
	}
	if n := len(agents(t, f, project)); n != 1 {
		t.Fatalf("%d agents after restart, want 1 (same instance uid)", n)
	}

	// Fleet restart keeps projects, tokens and agents; the agent comes back.
	f.Stop()
	f.Start()
	if !strings.Contains(f.MustCLI("project", "list"), project) {
		t.Fatal("project lost across fleet restart")
	}
	if !strings.Contains(f.MustCLI("token", "list", "--project", project), "boot") {
		t.Fatal("token lost across fleet restart")
	}
	waitConnected(t, f, project, a.ID, true, 20*time.Second)
	// The restarted fleet loaded the credential it had recorded for the
	// agent before serving: the reconnect was checked on that record, not
	// by a signature verification.
	checks := func(how string) string {
		return scrape(t, f.URL+"/metrics", `fleetprof_opamp_credential_checks_total{how="`+how+`"}`)
	}
	if got, sig := checks("recorded"), checks("signature"); got == "" || got == "0" || sig != "" {
		t.Errorf("reconnect after the fleet restart: %q checked on the record, %q by signature; want some and none", got, sig)
	}

	// Revoking the agent closes its connection within 5 s, and it cannot
	// come back with that credential.
	f.MustCLI("agents", "revoke", "--project", project, a.ID)
	revoked := time.Now()
	waitConnected(t, f, project, a.ID, false, 5*time.Second)
	t.Logf("revoked agent disconnected after %s", time.Since(revoked))
	time.Sleep(3 * time.Second)
	if as := agents(t, f, project); as[0].Connected {
		t.Fatal("revoked agent reconnected")
	}
	fleettest.Eventually(t, 15*time.Second, "agent reports it must re-enroll", func() (bool, string) {
		return strings.Contains(ag2.Log(), "must be re-enrolled"), ""
	})
	// Its bootstrap token does not bring a revoked agent back...
	ag2.Stop()
	ag3 := fleettest.StartAgent(t, ag.StateDir, "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", "node-a", "--platform", "systemd")
	fleettest.Eventually(t, 15*time.Second, "revoked agent refused re-enrollment", func() (bool, string) {
		return strings.Contains(ag3.Log(), "this agent was revoked"), tail(ag3.Log(), 5)
	})
	if as := agents(t, f, project); as[0].Connected || !as[0].Revoked {
		t.Fatalf("revoked agent re-enrolled with its bootstrap token: %+v", as[0])
	}
	// ...until an operator re-admits it.
	if err := f.Client().Do(t.Context(), http.MethodPost, "/api/v1/projects/"+project+"/agents/"+a.ID+"/readmit", struct{}{}, nil); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, f, project, a.ID, true, 20*time.Second)
	ag3.Stop()

	// Deleting the bootstrap token stops new enrollments with it.
	var toks []*store.Token
	if err := json.Unmarshal([]byte(f.MustCLI("token", "list", "--project", project, "-o", "json")), &toks); err != nil {
		t.Fatal(err)
	}
	f.MustCLI("token", "delete", "--project", project, toks[0].ID)
	fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot)
	time.Sleep(3 * time.Second)
	if n := len(agents(t, f, project)); n != 1 {
		t.Fatalf("%d agents: a deleted bootstrap token still enrolled one", n)
	}
}

func opampStatus(t *testing.T, url, bearer string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/v1/opamp", nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func apiStatus(t *testing.T, url, bearer string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/api/v1/projects", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBadTokenMatrix: every kind of bad token is refused with 401 at the
// OpAMP endpoint (and admin API), with the reason in the log; nothing
// crashes. A valid enroll token passes the same check (400: no upgrade).
func TestBadTokenMatrix(t *testing.T) {
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "matrix")
	enroll := f.MustCLI("token", "create", "--project", project, "--name", "e", "--scope", "enroll")
	write := f.MustCLI("token", "create", "--project", project, "--name", "w", "--scope", "write-profiles")
	revokedTok := f.MustCLI("token", "create", "--project", project, "--name", "r", "--scope", "enroll")
	var toks []*store.Token
	_ = json.Unmarshal([]byte(f.MustCLI("token", "list", "--project", project, "-o", "json")), &toks)
	for _, tk := range toks {
		if tk.Name == "r" {
			f.MustCLI("token", "delete", "--project", project, tk.ID)
		}
	}
	// The fleet's own key, to forge well-signed tokens with bad claims.
	keys, err := token.OpenKeySet(filepath.Join(f.DataDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	sign := func(o token.IssueOptions) string {
		s, _, err := keys.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	other, _ := token.OpenKeySet(t.TempDir())
	otherTok, _, _ := other.Issue(token.IssueOptions{Kind: token.KindBootstrap, ProjectID: project})
	parts := strings.Split(enroll, ".")
	pub := func() ed25519.PublicKey {
		var jwks struct{ Keys []token.JWK }
		resp, err := http.Get(f.URL + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&jwks)
		b, _ := base64.RawURLEncoding.DecodeString(jwks.Keys[0].X)
		return b
	}()
	hs256 := func() string {
		tk := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": "x", "projectId": project, "enroll": true})
		s, _ := tk.SignedString([]byte(pub))
		return s
	}()
	seg := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	tampered := func() string {
		var m map[string]any
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(b, &m)
		m["labels"] = map[string]string{"platform": "evil"}
		return parts[0] + "." + seg(m) + "." + parts[2]
	}()
	badSig := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))

	cases := []struct{ name, tok, logged string }{
		{"alg_none", seg(map[string]string{"alg": "none"}) + "." + parts[1] + ".", "unsupported token algorithm"},
		{"hs256_signed_with_public_key", hs256, "unsupported token algorithm"},
		{"unknown_kid", otherTok, "unknown signing key"},
		{"tampered_payload", tampered, "bad token signature"},
		{"bad_signature", badSig, "bad token signature"},
		{"expired", sign(token.IssueOptions{Kind: token.KindBootstrap, ProjectID: project, TTL: time.Minute, Now: time.Now().Add(-time.Hour)}), "token expired"},
		{"wrong_scope_write_profiles_cannot_enroll", write, "cannot connect an agent"},
		{"wrong_scope_admin_cannot_enroll", f.AdminToken, "cannot connect an agent"},
		{"revoked", revokedTok, "token revoked"},
		{"unknown_project", sign(token.IssueOptions{Kind: token.KindBootstrap, ProjectID: "00000000-0000-0000-0000-000000000000"}), "unknown project"},
		{"malformed", "not.a-token", "malformed token"},
		{"truncated", enroll[:len(enroll)/2], "malformed token"},
		{"oversized_header", seg(map[string]string{"alg": "EdDSA", "x": strings.Repeat("a", 9000)}) + "." + parts[1] + "." + parts[2], "malformed token"},
		{"missing", "", "no bearer token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := opampStatus(t, f.URL, tc.tok); got != http.StatusUnauthorized {
				t.Fatalf("OpAMP status %d, want 401", got)
			}
			fleettest.Eventually(t, 5*time.Second, "reason logged", func() (bool, string) {
				return strings.Contains(f.Log(), tc.logged), tc.logged
			})
		})
	}
	t.Run("enroll_token_cannot_administer", func(t *testing.T) {
		if got := apiStatus(t, f.URL, enroll); got != http.StatusUnauthorized {
			t.Fatalf("admin API with enroll token: %d, want 401", got)
		}
	})
	t.Run("write_token_cannot_administer", func(t *testing.T) {
		if got := apiStatus(t, f.URL, write); got != http.StatusUnauthorized {
			t.Fatalf("admin API with write token: %d, want 401", got)
		}
	})
	t.Run("valid_enroll_token_is_admitted", func(t *testing.T) {
		// Admitted, then the WebSocket upgrade fails: 400, not 401.
		if got := opampStatus(t, f.URL, enroll); got != http.StatusBadRequest {
			t.Fatalf("valid token: %d, want 400 (admitted, no upgrade)", got)
		}
	})
	resp, err := http.Get(f.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("fleet unhealthy after the matrix: %v", err)
	}
	resp.Body.Close()
}

// scrape returns the value of one sample (name with its labels) from a
// Prometheus text page, or "" when the page has no such sample.
func scrape(t *testing.T, url, sample string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return ""
}

// TestAgentGoneDuringACrashIsMarkedDisconnected: an agent that was
// connected when the fleet was SIGKILLed and does not come back is shown
// disconnected shortly after the restart (the fleet marks the agents that
// did not reconnect once a reconnect storm is over, 10 s after its start),
// while one that comes back stays connected.
func TestAgentGoneDuringACrashIsMarkedDisconnected(t *testing.T) {
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "crash")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	gone := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", "gone", "--platform", "systemd")
	a := waitConnected(t, f, project, "", true, 10*time.Second)
	stays := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--node", "stays", "--platform", "systemd")
	var b *store.Agent
	fleettest.Eventually(t, 10*time.Second, "the second agent connected", func() (bool, string) {
		for _, ag := range agents(t, f, project) {
			if ag.ID != a.ID && ag.Connected && ag.CredentialID != "" {
				b = ag
				return true, ""
			}
		}
		return false, ""
	})
	_ = stays

	f.Kill()
	gone.Stop()
	f.Start()
	restarted := time.Now()
	waitConnected(t, f, project, b.ID, true, 20*time.Second)
	waitConnected(t, f, project, a.ID, false, 25*time.Second)
	t.Logf("agent gone during the crash shown disconnected %s after the restart", time.Since(restarted).Round(time.Millisecond))
	if got := waitConnected(t, f, project, b.ID, true, time.Second); !got.Connected {
		t.Errorf("the agent that came back: %+v, want connected", got)
	}
}
