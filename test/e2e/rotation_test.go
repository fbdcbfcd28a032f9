package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/agent/upload"
	"github.com/fleetprof/fleetprof/fleet/client"
	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/token"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// simAgent is one agent made of the agent's real control and upload code.
type simAgent struct {
	ctl   *control.Client
	up    *upload.Uploader
	first string // the credential it enrolled with
	mu    sync.Mutex
	creds []string
	sent  int
}

func (s *simAgent) onCredential(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.creds) == 0 || s.creds[len(s.creds)-1] != tok {
		s.creds = append(s.creds, tok)
	}
	if s.first == "" {
		s.first = tok
	}
}

func (s *simAgent) current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.creds) == 0 {
		return ""
	}
	return s.creds[len(s.creds)-1]
}

func startSimAgents(t *testing.T, ctx context.Context, f *fleettest.Fleet, boot string, n int) []*simAgent {
	t.Helper()
	u, _ := url.Parse(f.URL)
	out := make([]*simAgent, n)
	for i := range out {
		s := &simAgent{}
		ctl, err := control.New(control.Options{
			FleetURL: f.URL, BootstrapToken: boot, StateDir: filepath.Join(t.TempDir(), "agent"),
			Description: describe.Agent{Version: "sim", Hostname: fmt.Sprintf("sim-%d", i), Platform: "systemd", OS: "linux"},
			Callbacks:   control.Callbacks{OnCredential: s.onCredential},
		})
		if err != nil {
			t.Fatal(err)
		}
		s.ctl = ctl
		s.up, err = upload.New(upload.Options{Address: u.Host, Insecure: true, Token: ctl.Credential, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = ctl.Run(ctx) }()
		go func() { _ = s.up.Run(ctx) }()
		out[i] = s
	}
	return out
}

func rotationStatus(t *testing.T, f *fleettest.Fleet, project string) console.RotationStatus {
	t.Helper()
	var st console.RotationStatus
	if err := client.New(f.URL, f.AdminToken, nil).Do(context.Background(), http.MethodGet, "/api/v1/projects/"+project+"/agents/rotation", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func allConnected(t *testing.T, f *fleettest.Fleet, project string, n int, within time.Duration) {
	t.Helper()
	fleettest.Eventually(t, within, fmt.Sprintf("%d agents connected with their own credential", n), func() (bool, string) {
		c := 0
		for _, a := range agents(t, f, project) {
			if a.Connected && a.CredentialID != "" && a.PendingCredentialID == "" {
				c++
			}
		}
		return c == n, fmt.Sprintf("%d connected", c)
	})
}

func ingestStatus(t *testing.T, f *fleettest.Fleet, tok string) int {
	t.Helper()
	body := profilestest.Gzipped(profilestest.CPU(time.Now(), time.Second, [][]string{{"main", "f"}}, []int64{1}))
	req, _ := http.NewRequest(http.MethodPost, f.URL+"/ingest?format=pprof&name=process_cpu%7Bprobe%3D%22x%22%7D", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBulkRotationWhileUploading: 50 agents (real control and upload code)
// upload a window every second while all of them are rotated in bulk.
// Every agent ends on a new credential, the old ones are refused, and not
// one window is missing or stored twice.
func TestBulkRotationWhileUploading(t *testing.T) {
	const n = 50
	f := fleettest.StartFleet(t, "--rotation-rate", "25")
	project := f.MustCLI("project", "create", "rotation")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sims := startSimAgents(t, ctx, f, boot, n)
	allConnected(t, f, project, n, 60*time.Second)

	// Upload one window per second per agent, before, during and after.
	base := time.Now().Truncate(time.Second).Add(-time.Hour)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range sims {
		wg.Add(1)
		go func(i int, s *simAgent) {
			defer wg.Done()
			tk := time.NewTicker(time.Second)
			defer tk.Stop()
			for seq := 0; ; seq++ {
				start := base.Add(time.Duration(seq) * time.Second)
				p := profilestest.CPU(start, time.Second, [][]string{{"main", fmt.Sprintf("work_%d", i)}}, []int64{int64(seq + 1)})
				s.up.Enqueue([]upload.Profile{{Labels: map[string]string{"__name__": "process_cpu", "agent": fmt.Sprint(i)}, Start: start, Duration: time.Second, Data: profilestest.Gzipped(p)}})
				s.mu.Lock()
				s.sent++
				s.mu.Unlock()
				select {
				case <-stop:
					return
				case <-tk.C:
				}
			}
		}(i, s)
	}
	time.Sleep(3 * time.Second)
	out := f.MustCLI("agents", "rotate-credentials", "--project", project, "-o", "json")
	var rr console.RotateResult
	if err := json.Unmarshal([]byte(out), &rr); err != nil || rr.Started != n {
		t.Fatalf("rotate-credentials: %s (%v)", out, err)
	}
	started := time.Now()
	fleettest.Eventually(t, 60*time.Second, "all rotated", func() (bool, string) {
		st := rotationStatus(t, f, project)
		return st.Rotated == n, fmt.Sprintf("%+v", st)
	})
	t.Logf("rotated %d agents in %s (paced at 25/s)", n, time.Since(started))
	if out := f.MustCLI("agents", "rotation-status", "--project", project); !strings.Contains(out, fmt.Sprintf("rotated %d, pending 0, failed 0", n)) {
		t.Errorf("rotation-status: %q", out)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	fleettest.Eventually(t, 30*time.Second, "upload queues drained", func() (bool, string) {
		for _, s := range sims {
			if m, sp := s.up.QueueLen(); m+sp > 0 {
				return false, fmt.Sprintf("queue %d+%d", m, sp)
			}
		}
		return true, ""
	})

	// Every agent is on a new credential; the old ones are refused.
	for i, s := range sims {
		if s.current() == s.first || s.ctl.Credential() == s.first {
			t.Fatalf("agent %d still on its first credential", i)
		}
		if code := ingestStatus(t, f, s.first); code != http.StatusUnauthorized {
			t.Fatalf("agent %d: old credential at ingest: %d, want 401", i, code)
		}
		if code := opampStatus(t, f.URL, s.first); code != http.StatusUnauthorized {
			t.Fatalf("agent %d: old credential at OpAMP: %d, want 401", i, code)
		}
	}
	// Not one window missing or duplicated.
	cl := client.New(f.URL, f.AdminToken, nil)
	q := url.Values{"query": {`process_cpu{}`}, "from": {base.Add(-time.Minute).Format(time.RFC3339)}, "to": {time.Now().Add(time.Minute).Format(time.RFC3339)}}
	var series []profiles.Series
	if err := cl.Do(ctx, http.MethodGet, "/api/v1/projects/"+project+"/profiles/series?"+q.Encode(), nil, &series); err != nil {
		t.Fatal(err)
	}
	byAgent := map[string]profiles.Series{}
	for _, s := range series {
		byAgent[s.Labels["agent"]] = s
	}
	for i, s := range sims {
		ser := byAgent[fmt.Sprint(i)]
		seen := map[int64]int{}
		for _, p := range ser.Points {
			seen[p.Time.Unix()]++
		}
		if len(ser.Points) != s.sent {
			t.Errorf("agent %d: %d windows stored, %d sent", i, len(ser.Points), s.sent)
		}
		for ts, c := range seen {
			if c != 1 {
				t.Errorf("agent %d: window %d stored %d times", i, ts, c)
			}
		}
	}
}

// TestRotationFailureKeepsOldCredential: the fleet makes the new credential
// unusable; the agent stays connected on the old one and the rotation shows
// as failed.
func TestRotationFailureKeepsOldCredential(t *testing.T) {
	f := fleettest.StartFleetEnv(t, []string{"FLEETPROF_TEST_FAIL_ROTATION=all"})
	project := f.MustCLI("project", "create", "rotfail")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sims := startSimAgents(t, ctx, f, boot, 1)
	allConnected(t, f, project, 1, 30*time.Second)
	before := agents(t, f, project)[0]
	f.MustCLI("agents", "rotate-credentials", "--project", project)
	fleettest.Eventually(t, 20*time.Second, "rotation failure visible", func() (bool, string) {
		st := rotationStatus(t, f, project)
		return st.Failed == 1, fmt.Sprintf("%+v", st)
	})
	a := agents(t, f, project)[0]
	if !a.Connected || a.CredentialID != before.CredentialID {
		t.Fatalf("after failed rotation: connected=%v credential %s (was %s)", a.Connected, a.CredentialID, before.CredentialID)
	}
	if sims[0].ctl.Credential() != sims[0].first {
		t.Fatal("agent switched to the failed credential")
	}
	if st := sims[0].ctl.Status(); st.RotationFailed == "" {
		t.Fatal("agent status does not show the failed rotation")
	}
	if code := ingestStatus(t, f, sims[0].first); code != http.StatusOK && code != http.StatusCreated && code != http.StatusNoContent {
		t.Fatalf("old credential no longer uploads: %d", code)
	}
}

// TestKillDuringBulkRotation: SIGKILL the fleet while a paced bulk
// rotation is under way; after restart every agent connects (old or new
// credential) and the rotation completes.
func TestKillDuringBulkRotation(t *testing.T) {
	const n = 20
	f := fleettest.StartFleet(t, "--rotation-rate", "5")
	project := f.MustCLI("project", "create", "rotkill")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	startSimAgents(t, ctx, f, boot, n)
	allConnected(t, f, project, n, 60*time.Second)
	f.MustCLI("agents", "rotate-credentials", "--project", project)
	fleettest.Eventually(t, 20*time.Second, "rotation under way", func() (bool, string) {
		st := rotationStatus(t, f, project)
		return st.Rotated > 0 && st.Rotated < n, fmt.Sprintf("%+v", st)
	})
	f.Kill()
	f.Start()
	allConnected(t, f, project, n, 60*time.Second)
	fleettest.Eventually(t, 60*time.Second, "rotation completed after restart", func() (bool, string) {
		st := rotationStatus(t, f, project)
		return st.Rotated == n, fmt.Sprintf("%+v", st)
	})
}

// TestExpiredWhileOffline: an agent whose credential expired while it was
// stopped says so clearly and re-enrolls with its bootstrap token; without
// one it reports that it must be re-enrolled (log and /readyz).
func TestExpiredWhileOffline(t *testing.T) {
	f := fleettest.StartFleet(t, "--agent-credential-ttl", "3s")
	project := f.MustCLI("project", "create", "expiry")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	state := t.TempDir()
	ag := fleettest.StartAgent(t, state, "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot)
	first := waitConnected(t, f, project, "", true, 15*time.Second)
	ag.Stop()
	// Wait until the stored credential (perhaps rotated meanwhile) expired.
	raw, err := os.ReadFile(filepath.Join(state, "credential"))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := token.ParseUnverified(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stored credential iat %v exp %v (now %v)", claims.IssuedAt.Time, claims.ExpiresAt.Time, time.Now())
	time.Sleep(time.Until(claims.ExpiresAt.Time) + token.Leeway + time.Second)

	// Without a bootstrap token: told clearly, not ready.
	addr := fleettest.FreeAddr(t)
	noBoot := fleettest.StartAgent(t, state, "--fleet-address", f.URL, "--insecure", "--http-address", addr)
	fleettest.Eventually(t, 15*time.Second, "must-re-enroll message", func() (bool, string) {
		return strings.Contains(noBoot.Log(), "must be re-enrolled") && strings.Contains(noBoot.Log(), "expired"), tail(noBoot.Log(), 5)
	})
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ready   bool
		Control struct{ NeedsEnroll bool }
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || st.Ready || !st.Control.NeedsEnroll {
		t.Fatalf("/readyz = %d %+v, want 503 with needsEnroll", resp.StatusCode, st)
	}
	noBoot.Stop()

	// With the bootstrap token: re-enrolls as the same agent.
	again := fleettest.StartAgent(t, state, "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot)
	fleettest.Eventually(t, 20*time.Second, "re-enrolled", func() (bool, string) {
		for _, a := range agents(t, f, project) {
			if a.ID == first.ID && a.Connected && a.CredentialID != first.CredentialID {
				return true, ""
			}
		}
		return false, tail(again.Log(), 5)
	})
	if !strings.Contains(again.Log(), "re-enrolling with the bootstrap token") {
		t.Errorf("agent did not say it re-enrolls:\n%s", again.Log())
	}
	if n := len(agents(t, f, project)); n != 1 {
		t.Fatalf("%d agents, want the same one re-enrolled", n)
	}
}
