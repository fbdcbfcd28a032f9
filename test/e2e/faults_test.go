package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // integrity check of the fleet's store

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// TestKillDuringEnrollment: the fleet is SIGKILLed while 500 agents (the
// agent's real control code, in this process) enroll with one bootstrap
// token. After a restart on the same data dir every agent ends enrolled
// exactly once — one record per instance uid, no strays — and connected
// with its own proven credential.
func TestKillDuringEnrollment(t *testing.T) {
	const n = 500
	f := fleettest.StartFleet(t, "--log-level", "warn")
	project := f.MustCLI("project", "create", "faults")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	var credentials atomic.Int64
	quarter := make(chan struct{})
	ids := map[string]bool{}
	dir := t.TempDir()
	// Kill as soon as a quarter has enrolled: some agents then hold a
	// proven credential, some a pending offer, some are mid-handshake and
	// some have not dialled yet.
	killed := make(chan int64, 1)
	go func() {
		select {
		case <-quarter:
			f.Kill()
			killed <- credentials.Load()
		case <-ctx.Done():
		}
	}()
	for i := range n {
		var once sync.Once
		c, err := control.New(control.Options{
			FleetURL: f.URL, BootstrapToken: boot, StateDir: filepath.Join(dir, fmt.Sprint(i)),
			Description: describe.Agent{Version: "fault", Hostname: fmt.Sprintf("fault-%d", i), Platform: "systemd", OS: "linux"},
			Callbacks: control.Callbacks{OnCredential: func(string) {
				once.Do(func() {
					if credentials.Add(1) == n/4 {
						close(quarter)
					}
				})
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ids[c.InstanceID()] = true
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
		if i%25 == 24 {
			time.Sleep(50 * time.Millisecond) // a storm over ~1 s, not one burst of 500 dials
		}
	}
	// Kill once part of the fleet has enrolled: some agents hold a proven
	// credential, some a pending offer, some are mid-handshake.
	var atKill int64
	select {
	case atKill = <-killed:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d of %d agents enrolled in 60s", credentials.Load(), n)
	}
	t.Logf("fleet SIGKILLed with %d of %d agents holding a credential", atKill, n)
	if atKill == n {
		t.Fatalf("all %d agents enrolled before the kill: the test did not kill during enrollment", n)
	}
	restart := time.Now()
	f.Start()
	fleettest.Eventually(t, 75*time.Second, "every agent enrolled and connected after the restart", func() (bool, string) {
		as := agents(t, f, project)
		c := 0
		for _, a := range as {
			if a.Connected && a.CredentialID != "" && a.PendingCredentialID == "" {
				c++
			}
		}
		return c == n, fmt.Sprintf("%d records, %d connected with own credential", len(as), c)
	})
	t.Logf("all %d agents enrolled and connected %s after the restart", n, time.Since(restart).Round(time.Millisecond))
	as := agents(t, f, project)
	seen := map[string]int{}
	for _, a := range as {
		seen[a.ID]++
	}
	if len(as) != n {
		t.Errorf("%d agent records, want %d (one per instance uid)", len(as), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("agent %s recorded %d times", id, k)
		}
		if !ids[id] {
			t.Errorf("agent %s recorded but no simulated agent has that instance uid", id)
		}
	}
	for id := range ids {
		if seen[id] == 0 {
			t.Errorf("agent %s is not recorded", id)
		}
	}
	if c := credentials.Load(); c != n {
		t.Errorf("%d agents stored a credential, want %d", c, n)
	}
}

// mountTmpfs mounts a tmpfs of the given size on a fresh directory and
// unmounts it at cleanup, after stop.
func mountTmpfs(t *testing.T, size string, stop func()) string {
	t.Helper()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		if os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("mount tmpfs (needs root): %v", err)
		}
		t.Skipf("mount tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() {
		stop()
		if err := syscall.Unmount(mnt, 0); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return mnt
}

// fill writes a file until the filesystem is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := fh.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	// Fill the last partial block too.
	for {
		if _, err := fh.Write(buf[:512]); err != nil {
			break
		}
	}
	return p
}

// apiCall does an admin API call and returns status and body.
func apiCall(t *testing.T, f *fleettest.Fleet, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func integrityCheck(t *testing.T, dataDir string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dataDir, "*.db"))
	if len(matches) == 0 {
		t.Fatalf("no *.db in %s", dataDir)
	}
	db, err := sql.Open("sqlite", "file:"+matches[0]+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res []string
	rows, err := db.Query("PRAGMA integrity_check")
	if err != nil {
		t.Fatalf("integrity_check on %s: %v", matches[0], err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		res = append(res, s)
	}
	return strings.Join(res, "; ")
}

// TestDiskFull: the fleet's data dir is a small tmpfs that fills up. Writes
// through the API fail with a 5xx whose message names the full disk (not
// an anonymous internal error), reads keep working, connected agents stay
// connected; once space is freed writes succeed again, and after a restart
// the SQLite store passes PRAGMA integrity_check.
func TestDiskFull(t *testing.T) {
	f := fleettest.StartFleet(t, "--log-level", "warn")
	f.Stop()
	mnt := mountTmpfs(t, "24m", f.Stop)
	f.DataDir = mnt
	f.Start()
	project := f.MustCLI("project", "create", "diskfull")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "boot", "--scope", "enroll")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	const n = 5
	startSimAgents(t, ctx, f, boot, n)
	allConnected(t, f, project, n, 30*time.Second)

	filler := fill(t, mnt)
	// Write until the store runs out of room: SQLite may still reuse
	// space it holds (WAL frames, free pages) for a while.
	var code int
	var body string
	for i := range 2000 {
		code, body = apiCall(t, f, http.MethodPost, "/api/v1/projects/"+project+"/tokens",
			fmt.Sprintf(`{"name":"full-%d-%s","scope":"enroll"}`, i, strings.Repeat("x", 80)))
		if code != http.StatusCreated && code != http.StatusOK {
			break
		}
	}
	t.Logf("write on a full disk: %d %s", code, body)
	if code < 500 {
		t.Fatalf("write on a full disk: status %d, want 5xx: %s", code, body)
	}
	if !strings.Contains(strings.ToLower(body), "disk") {
		t.Errorf("error on a full disk %q does not name the disk", body)
	}
	// Reads still work, and the agents stay connected.
	if code, body := apiCall(t, f, http.MethodGet, "/api/v1/projects/"+project+"/agents", ""); code != http.StatusOK {
		t.Errorf("read on a full disk: %d %s", code, body)
	}
	if resp, err := http.Get(f.URL + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("healthz on a full disk: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Free the space: the fleet recovers without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 20*time.Second, "writes succeed after space was freed", func() (bool, string) {
		code, body := apiCall(t, f, http.MethodPost, "/api/v1/projects/"+project+"/tokens", `{"name":"after","scope":"enroll"}`)
		return code == http.StatusCreated || code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	allConnected(t, f, project, n, 30*time.Second)

	// Restart; the store is intact and serves what was written.
	f.Stop()
	if got := integrityCheck(t, mnt); got != "ok" {
		t.Fatalf("PRAGMA integrity_check after disk full = %q, want ok", got)
	}
	f.Start()
	out := f.MustCLI("token", "list", "--project", project, "-o", "json")
	var toks []map[string]any
	if err := json.Unmarshal([]byte(out), &toks); err != nil {
		t.Fatalf("token list: %v: %s", err, out)
	}
	names := map[string]bool{}
	for _, tk := range toks {
		names[fmt.Sprint(tk["name"])] = true
	}
	if !names["boot"] || !names["after"] {
		t.Errorf("tokens after restart = %v, want boot and after among them", names)
	}
	allConnected(t, f, project, n, 60*time.Second)
}
