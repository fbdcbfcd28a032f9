package fleettest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/client"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Root returns the repository root ($FLEETPROF_ROOT, or up from the cwd
// to go.mod).
func Root() string {
	if r := os.Getenv("FLEETPROF_ROOT"); r != "" {
		return r
	}
	d, _ := os.Getwd()
	for d != "/" {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		d = filepath.Dir(d)
	}
	return "."
}

// Binaries builds dist binaries once per test process and returns their
// directory.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "fleetprof-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"./fleet/cmd/fleetprof", "./agent/cmd/fleetprof-agent"} {
			cmd := exec.Command("go", "build", "-o", binDir+"/", pkg)
			cmd.Dir = Root()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Main runs a package's tests and then removes the binaries Binaries
// built (about 80 MB per test process). Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	RemoveBinaries()
	os.Exit(code)
}

// RemoveBinaries removes the binaries Binaries built, for a TestMain that
// has more to do than Main.
func RemoveBinaries() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

// FreeAddr returns a loopback address with a free port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Fleet is a running `fleetprof serve`.
type Fleet struct {
	t          testing.TB
	DataDir    string
	Addr       string
	URL        string
	AdminToken string
	Extra      []string // extra serve flags
	Env        []string
	cmd        *exec.Cmd
	done       chan struct{}
	log        *syncBuffer
	caFile     string
}

// StartFleet starts a fleet on a fresh data dir and waits for /readyz.
func StartFleet(t testing.TB, extra ...string) *Fleet {
	t.Helper()
	return StartFleetEnv(t, nil, extra...)
}

// StartFleetEnv is StartFleet with extra environment variables (test hooks).
func StartFleetEnv(t testing.TB, env []string, extra ...string) *Fleet {
	t.Helper()
	f := &Fleet{t: t, DataDir: t.TempDir(), Addr: FreeAddr(t), Extra: extra, Env: env, log: &syncBuffer{}}
	f.URL = "http://" + f.Addr
	f.Start()
	t.Cleanup(f.Stop)
	return f
}

// StartFleetTLS starts a fleet serving HTTPS on addr with the given key
// pair; the CLI trusts cert.
func StartFleetTLS(t testing.TB, addr, cert, key string, extra ...string) *Fleet {
	t.Helper()
	f := &Fleet{t: t, DataDir: t.TempDir(), Addr: addr, Extra: append([]string{"--tls-cert-file", cert, "--tls-key-file", key}, extra...), log: &syncBuffer{}, caFile: cert}
	f.URL = "https://" + f.Addr
	f.Start()
	t.Cleanup(f.Stop)
	return f
}

// Client returns an API client with the admin token.
func (f *Fleet) Client() *client.Client {
	return client.New(f.URL, f.AdminToken, f.httpClient())
}

func (f *Fleet) httpClient() *http.Client {
	if f.caFile == "" {
		return &http.Client{Timeout: 60 * time.Second}
	}
	pemBytes, err := os.ReadFile(f.caFile)
	if err != nil {
		f.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// Start (re)starts the server process on the same data dir and address.
func (f *Fleet) Start() {
	f.t.Helper()
	bin := filepath.Join(Binaries(f.t), "fleetprof")
	args := append([]string{"serve", "--data-dir", f.DataDir, "--http-address", f.Addr, "--log-level", "debug"}, f.Extra...)
	f.cmd = exec.Command(bin, args...)
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	f.cmd.Env = append(os.Environ(), f.Env...)
	if err := f.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(f.cmd, f.done)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := f.httpClient().Get(f.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-f.done:
			f.t.Fatalf("fleet exited during start:\n%s", f.log.String())
		default:
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("fleet not ready after 30s:\n%s", f.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(f.DataDir, "admin-token"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.AdminToken = strings.TrimSpace(string(b))
}

// Log returns everything the server printed.
func (f *Fleet) Log() string { return f.log.String() }

// Stop stops the server gracefully (SIGTERM), waiting up to 15s.
func (f *Fleet) Stop() { f.signal(syscall.SIGTERM) }

// Kill stops the server with SIGKILL.
func (f *Fleet) Kill() { f.signal(syscall.SIGKILL) }

func (f *Fleet) signal(sig syscall.Signal) {
	if f.cmd == nil || f.cmd.Process == nil {
		return
	}
	select {
	case <-f.done:
		return
	default:
	}
	_ = f.cmd.Process.Signal(sig)
	select {
	case <-f.done:
	case <-time.After(15 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
	}
}

// CLI runs `fleetprof ARGS --server URL` with the admin token and returns
// its stdout.
func (f *Fleet) CLI(args ...string) (string, error) {
	return f.CLIWithToken(f.AdminToken, args...)
}

// CLIWithToken is CLI with another admin token.
func (f *Fleet) CLIWithToken(tok string, args ...string) (string, error) {
	bin := filepath.Join(Binaries(f.t), "fleetprof")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--server", f.URL)...)
	cmd.Env = append(os.Environ(), "FLEETPROF_ADMIN_TOKEN="+tok)
	if f.caFile != "" {
		cmd.Env = append(cmd.Env, "SSL_CERT_FILE="+f.caFile)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("fleetprof %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// MustCLI is CLI that fails the test on error, returning trimmed stdout.
func (f *Fleet) MustCLI(args ...string) string {
	f.t.Helper()
	out, err := f.CLI(args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// Agent is a running fleetprof-agent.
type Agent struct {
	t        testing.TB
	StateDir string
	Args     []string
	cmd      *exec.Cmd
	done     chan struct{}
	log      *syncBuffer
}

// StartAgent starts an agent with the given flags (plus --state-dir when
// absent and --http-address off) against a fleet.
func StartAgent(t testing.TB, stateDir string, args ...string) *Agent {
	t.Helper()
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	a := &Agent{t: t, StateDir: stateDir, Args: args, log: &syncBuffer{}}
	a.Start()
	t.Cleanup(a.Stop)
	return a
}

// Start (re)starts the agent process.
func (a *Agent) Start() {
	a.t.Helper()
	bin := filepath.Join(Binaries(a.t), "fleetprof-agent")
	args := append([]string{"--state-dir", a.StateDir, "--log-level", "debug", "--http-address", ""}, a.Args...)
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(a.cmd, a.done)
}

// Log returns what the agent printed.
func (a *Agent) Log() string { return a.log.String() }

// Exited reports whether the process has ended.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Stop stops the agent (SIGTERM, then SIGKILL after 10s).
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil || a.Exited() {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// Eventually polls cond every 100ms until it holds or d passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s (last: %s)", what, d, last)
}

// Pid returns the agent's process id.
func (a *Agent) Pid() int {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}
