package upgrade

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
)

type fixture struct {
	dir, exe string
	pub      ed25519.PublicKey
	priv     ed25519.PrivateKey
	srv      *httptest.Server
	body     []byte
	cuts     atomic.Int32 // requests to cut short
	gets     atomic.Int32
	auth     atomic.Value
	mu       sync.Mutex
	reports  []*protobufs.PackageStatuses
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{dir: t.TempDir()}
	f.pub, f.priv, _ = ed25519.GenerateKey(rand.Reader)
	f.exe = filepath.Join(t.TempDir(), "fleetprof-agent")
	if err := os.WriteFile(f.exe, []byte("#!/bin/sh\necho v1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.body = []byte("#!/bin/sh\necho v2\n" + strings.Repeat("x", 200_000))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/release-key", func(w http.ResponseWriter, r *http.Request) {
		der, _ := x509.MarshalPKIXPublicKey(f.pub)
		_ = pem.Encode(w, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
	})
	mux.HandleFunc("GET /bin", func(w http.ResponseWriter, r *http.Request) {
		f.gets.Add(1)
		f.auth.Store(r.Header.Get("Authorization"))
		w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
		if f.cuts.Add(-1) >= 0 {
			_, _ = w.Write(f.body[:1000])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // cut the connection mid-body
		}
		_, _ = w.Write(f.body)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) manager(t *testing.T) *Manager {
	m, err := New(Options{
		StateDir: f.dir, Executable: f.exe, FleetURL: f.srv.URL, Version: "v1", RetryDelay: 10 * time.Millisecond, Attempts: 3,
		Credential: func() string { return "agent-cred" },
		Report: func(ps *protobufs.PackageStatuses) {
			f.mu.Lock()
			f.reports = append(f.reports, ps)
			f.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (f *fixture) last() *protobufs.PackageStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 {
		return nil
	}
	return f.reports[len(f.reports)-1].Packages[""]
}

func (f *fixture) offer(version string, body []byte, sign func(v, sum string) []byte) *protobufs.PackagesAvailable {
	sum := sha256.Sum256(body)
	hx := hex.EncodeToString(sum[:])
	return &protobufs.PackagesAvailable{AllPackagesHash: []byte{1}, Packages: map[string]*protobufs.PackageAvailable{"": {
		Type: protobufs.PackageType_PackageType_TopLevel, Version: version,
		File: &protobufs.DownloadableFile{DownloadUrl: "/bin", ContentHash: sum[:], Signature: sign(version, hx)},
	}}}
}

func (f *fixture) sign(v, sum string) []byte { return ed25519.Sign(f.priv, SignedMessage(v, sum)) }

func exeBody(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRefusesTamperedPackages(t *testing.T) {
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name  string
		offer func(f *fixture) *protobufs.PackagesAvailable
		want  string
	}{
		{"hash mismatch", func(f *fixture) *protobufs.PackagesAvailable {
			// Signed offer for other bytes than the server delivers.
			return f.offer("v2", []byte("the build that was signed"), f.sign)
		}, "content hash mismatch"},
		{"signature by another key", func(f *fixture) *protobufs.PackagesAvailable {
			return f.offer("v2", f.body, func(v, sum string) []byte { return ed25519.Sign(other, SignedMessage(v, sum)) })
		}, "does not verify with the pinned release key"},
		{"signature of another version", func(f *fixture) *protobufs.PackagesAvailable {
			return f.offer("v2", f.body, func(_, sum string) []byte { return f.sign("v9", sum) })
		}, "does not verify with the pinned release key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			m := f.manager(t)
			err := m.install(t.Context(), tt.offer(f))
			if err == nil || errors.Is(err, ErrRestart) {
				t.Fatalf("install = %v, want a refusal", err)
			}
			st := f.last()
			if st == nil || st.Status != protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed || !strings.Contains(st.ErrorMessage, tt.want) {
				t.Fatalf("last status = %v, want INSTALL_FAILED with %q", st, tt.want)
			}
			if got := exeBody(t, f.exe); got != "#!/bin/sh\necho v1\n" {
				t.Fatalf("binary replaced: %q", got[:min(len(got), 40)])
			}
			for _, n := range []string{f.exe + ".download", f.exe + ".prev", filepath.Join(f.dir, markerFile)} {
				if _, err := os.Stat(n); err == nil {
					t.Errorf("%s left behind", n)
				}
			}
		})
	}
}

func TestCutDownloadIsRetriedThenSwapped(t *testing.T) {
	f := newFixture(t)
	f.cuts.Store(2) // two cut responses, then a whole one
	m := f.manager(t)
	err := m.install(t.Context(), f.offer("v2", f.body, f.sign))
	if !errors.Is(err, ErrRestart) {
		t.Fatalf("install = %v, want ErrRestart", err)
	}
	if g := f.gets.Load(); g != 3 {
		t.Errorf("downloads = %d, want 3 (two cut, one whole)", g)
	}
	if a, _ := f.auth.Load().(string); a != "Bearer agent-cred" {
		t.Errorf("download Authorization = %q", a)
	}
	if exeBody(t, f.exe) != string(f.body) {
		t.Fatal("binary not replaced by the verified download")
	}
	if exeBody(t, f.exe+".prev") != "#!/bin/sh\necho v1\n" {
		t.Fatal(".prev does not hold the previous binary")
	}
	mk, err := readMarker(f.dir)
	if err != nil || mk == nil || mk.State != statePending || mk.From != "v1" || mk.To != "v2" {
		t.Fatalf("marker = %+v, %v", mk, err)
	}
}

func TestCutDownloadGivesUpLeavingBinary(t *testing.T) {
	f := newFixture(t)
	f.cuts.Store(100)
	m := f.manager(t)
	err := m.install(t.Context(), f.offer("v2", f.body, f.sign))
	if err == nil || errors.Is(err, ErrRestart) {
		t.Fatalf("install = %v", err)
	}
	if st := f.last(); st.Status != protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed || !strings.Contains(st.ErrorMessage, "after 3 attempts") {
		t.Fatalf("status = %v", st)
	}
	if exeBody(t, f.exe) != "#!/bin/sh\necho v1\n" {
		t.Fatal("binary replaced")
	}
}

func TestGuardRestoresAfterCrashLoopAndDeadline(t *testing.T) {
	for _, tt := range []struct {
		name   string
		starts int
		now    time.Duration // after the swap
		want   string
	}{
		{"crash loop", 4, time.Second, "crash loop"},
		{"deadline", 1, 2 * time.Minute, "did not connect and report healthy"},
		{"within bounds", 3, time.Second, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.cuts.Store(0)
			m := f.manager(t)
			if err := m.install(t.Context(), f.offer("v2", f.body, f.sign)); !errors.Is(err, ErrRestart) {
				t.Fatal(err)
			}
			t.Setenv("INVOCATION_ID", "")
			swap := time.Now()
			var restored bool
			var err error
			for i := 0; i < tt.starts; i++ {
				restored, err = Guard(f.dir, 3, swap.Add(tt.now))
				if err != nil {
					t.Fatal(err)
				}
			}
			if restored != (tt.want != "") {
				t.Fatalf("restored = %v", restored)
			}
			mk, _ := readMarker(f.dir)
			if tt.want == "" {
				if mk.State != statePending || exeBody(t, f.exe) != string(f.body) {
					t.Fatalf("marker %+v or binary changed", mk)
				}
				return
			}
			if exeBody(t, f.exe) != "#!/bin/sh\necho v1\n" {
				t.Fatal("previous binary not restored")
			}
			if mk.State != stateFailed || !strings.Contains(mk.Reason, tt.want) || mk.Failed["v2"] == "" {
				t.Fatalf("marker = %+v", mk)
			}
			// The restored v1 reports the failure and does not retry v2.
			m2 := f.manager(t)
			if st := m2.LastStatuses().Packages[""]; st.Status != protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed || st.ServerOfferedVersion != "v2" {
				t.Fatalf("initial status = %v", st)
			}
			gets := f.gets.Load()
			if err := m2.install(t.Context(), f.offer("v2", f.body, f.sign)); err == nil || !strings.Contains(err.Error(), "not retried") {
				t.Fatalf("re-offer = %v", err)
			}
			if f.gets.Load() != gets {
				t.Fatal("failed version downloaded again")
			}
		})
	}
}

func TestGuardCountsOneSystemdStartOnce(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t)
	if err := m.install(t.Context(), f.offer("v2", f.body, f.sign)); !errors.Is(err, ErrRestart) {
		t.Fatal(err)
	}
	t.Setenv("INVOCATION_ID", "abc")
	for range 5 { // ExecStartPre and the agent itself, same start
		if restored, err := Guard(f.dir, 3, time.Now()); err != nil || restored {
			t.Fatalf("Guard = %v, %v", restored, err)
		}
	}
	if mk, _ := readMarker(f.dir); mk.Starts != 1 {
		t.Fatalf("starts = %d, want 1", mk.Starts)
	}
}

func TestProbationConfirmsWhenHealthy(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t)
	if err := m.install(t.Context(), f.offer("v2", f.body, f.sign)); !errors.Is(err, ErrRestart) {
		t.Fatal(err)
	}
	var healthy atomic.Bool
	m2, err := New(Options{StateDir: f.dir, Executable: f.exe, FleetURL: f.srv.URL, Version: "v2", Healthy: healthy.Load,
		Credential: func() string { return "c" }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m2.Run(ctx) }()
	time.Sleep(1500 * time.Millisecond)
	if mk, _ := readMarker(f.dir); mk.State != statePending {
		t.Fatalf("confirmed before healthy: %+v", mk)
	}
	healthy.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	// The marker is written first, then the status reported: wait for both.
	for {
		mk, _ := readMarker(f.dir)
		st := m2.LastStatuses().GetPackages()[""]
		if mk.State == stateGood && st.GetStatus() == protobufs.PackageStatusEnum_PackageStatusEnum_Installed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not confirmed: marker %+v, status %v", mk, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestProbationDeadlineRestores(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t)
	m.o.HealthBound = time.Second
	if err := m.install(t.Context(), f.offer("v2", f.body, f.sign)); !errors.Is(err, ErrRestart) {
		t.Fatal(err)
	}
	m2, err := New(Options{StateDir: f.dir, Executable: f.exe, FleetURL: f.srv.URL, Version: "v2", Healthy: func() bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Run(t.Context()); !errors.Is(err, ErrRestart) {
		t.Fatalf("Run = %v, want ErrRestart after the deadline", err)
	}
	if exeBody(t, f.exe) != "#!/bin/sh\necho v1\n" {
		t.Fatal("previous binary not restored")
	}
}

func TestKubernetesNeverReplaces(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t)
	m.o.Kubernetes = true
	if err := m.install(t.Context(), f.offer("v2", f.body, f.sign)); err == nil {
		t.Fatal("installed on Kubernetes")
	}
	if st := f.last(); !strings.Contains(st.ErrorMessage, "managed by DaemonSet") || f.gets.Load() != 0 {
		t.Fatalf("status = %v, downloads %d", st, f.gets.Load())
	}
}

func TestPinnedKeyIsNeverReplaced(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t)
	if err := m.PinKey(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The fleet now serves another key: the pinned one stays.
	f.pub, f.priv, _ = ed25519.GenerateKey(rand.Reader)
	err := m.install(t.Context(), f.offer("v2", f.body, f.sign))
	if err == nil || !strings.Contains(err.Error(), "pinned release key") {
		t.Fatalf("install with a new key = %v", err)
	}
}
