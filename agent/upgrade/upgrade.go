package upgrade

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"
)

// ExitCode is the agent's exit status after it swapped in a new binary
// (or restored the previous one): the service manager restarts it
// (systemd Restart=on-failure or always).
const ExitCode = 75

// Errors.
var (
	// ErrRestart: the binary on disk changed; exit with ExitCode so the
	// service manager starts it.
	ErrRestart = errors.New("agent binary replaced: restart to run it")
)

// ManagedByDaemonSet is what a Kubernetes agent answers to an offer.
const ManagedByDaemonSet = "managed by DaemonSet: upgrade the DaemonSet image instead"

// KeyFile is the pinned release public key in the state dir.
const KeyFile = "release-key.pem"

// SignedMessage is what the fleet's release key signs (the same bytes as
// fleet/release.SignedMessage).
func SignedMessage(version, sha256Hex string) []byte {
	return []byte("fleetprof-agent-release\n" + version + "\n" + sha256Hex + "\n")
}

// Options configures a Manager.
type Options struct {
	// StateDir holds the pinned key and the upgrade marker. Required.
	StateDir string
	// Executable is the binary to replace; "" means os.Executable().
	Executable string
	// FleetURL is the fleet's base URL: relative download URLs resolve
	// against it, and only its origin gets the agent's credential.
	FleetURL string
	// Version is the running version.
	Version string
	// Kubernetes agents never replace themselves.
	Kubernetes bool
	// TLSConfig for the fleet; nil means system roots.
	TLSConfig *tls.Config
	// Credential returns the agent's credential ("" before enrollment).
	Credential func() string
	// Healthy reports whether the agent is connected to the fleet and
	// healthy; a new version must get there within HealthBound.
	Healthy func() bool
	// HealthBound; 0 means 60s.
	HealthBound time.Duration
	// MaxStarts is how often a new version may start without proving
	// itself before the previous one is restored; 0 means 3.
	MaxStarts int
	// Attempts at downloading one offer; 0 means 5.
	Attempts int
	// RetryDelay before the second attempt (doubling after); 0 means 2s.
	RetryDelay time.Duration
	// Report sends package statuses to the fleet (control.Client).
	Report func(*protobufs.PackageStatuses)
	Logger *zap.Logger
}

// Manager installs offered releases. Its methods are goroutine-safe.
type Manager struct {
	o    Options
	log  *zap.Logger
	http *http.Client

	mu      sync.Mutex
	offer   *protobufs.PackagesAvailable
	last    *protobufs.PackageStatuses
	wakeup  chan struct{}
	pending bool // this process is a new version that must prove itself
}

// New returns a manager; it does not touch the binary until Run.
func New(o Options) (*Manager, error) {
	if o.StateDir == "" {
		return nil, errors.New("upgrade: StateDir is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own binary: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return nil, fmt.Errorf("find own binary: %w", err)
		}
		o.Executable = exe
	}
	if o.Credential == nil {
		o.Credential = func() string { return "" }
	}
	if o.Healthy == nil {
		o.Healthy = func() bool { return true }
	}
	if o.Report == nil {
		o.Report = func(*protobufs.PackageStatuses) {}
	}
	if o.HealthBound <= 0 {
		o.HealthBound = 60 * time.Second
	}
	if o.MaxStarts <= 0 {
		o.MaxStarts = 3
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 2 * time.Second
	}
	m := &Manager{o: o, log: o.Logger, wakeup: make(chan struct{}, 1),
		http: &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{TLSClientConfig: o.TLSConfig, Proxy: http.ProxyFromEnvironment}}}
	m.last = m.initialStatus()
	return m, nil
}

// LastStatuses is what the agent reports about its package now (also on
// every reconnect).
func (m *Manager) LastStatuses() *protobufs.PackageStatuses {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

func (m *Manager) initialStatus() *protobufs.PackageStatuses {
	mk, _ := readMarker(m.o.StateDir)
	ps := &protobufs.PackageStatuses{Packages: map[string]*protobufs.PackageStatus{}, ServerProvidedAllPackagesHash: []byte{}}
	if mk == nil {
		return ps
	}
	ps.ServerProvidedAllPackagesHash = mk.AllPackagesHash
	st := &protobufs.PackageStatus{Name: "", AgentHasVersion: m.o.Version, ServerOfferedVersion: mk.To}
	switch mk.State {
	case stateFailed:
		st.Status, st.ErrorMessage = protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, mk.Reason
	case stateGood:
		st.Status = protobufs.PackageStatusEnum_PackageStatusEnum_Installed
	default:
		st.Status = protobufs.PackageStatusEnum_PackageStatusEnum_Installing
	}
	ps.Packages[""] = st
	return ps
}

func (m *Manager) report(offered, hash string, allHash []byte, st protobufs.PackageStatusEnum, msg string) {
	ps := &protobufs.PackageStatuses{
		Packages: map[string]*protobufs.PackageStatus{"": {
			Name: "", AgentHasVersion: m.o.Version, ServerOfferedVersion: offered, Status: st, ErrorMessage: msg,
		}},
		ServerProvidedAllPackagesHash: allHash,
	}
	if ps.ServerProvidedAllPackagesHash == nil {
		ps.ServerProvidedAllPackagesHash = []byte{}
	}
	m.mu.Lock()
	m.last = ps
	m.mu.Unlock()
	m.o.Report(ps)
}

// OnPackages is the control.Callbacks hook: it keeps the latest offer
// for Run and returns at once.
func (m *Manager) OnPackages(_ context.Context, p *protobufs.PackagesAvailable, _ func(*protobufs.PackageStatuses)) {
	m.mu.Lock()
	m.offer = p
	m.mu.Unlock()
	select {
	case m.wakeup <- struct{}{}:
	default:
	}
}

// Run checks a pending upgrade at start (restoring the previous binary
// when the guard says so), confirms a new version once it is healthy,
// and installs offers until ctx ends. It returns ErrRestart after it
// replaced the binary: the caller exits with ExitCode.
func (m *Manager) Run(ctx context.Context) error {
	restored, err := Guard(m.o.StateDir, m.o.MaxStarts, time.Now())
	if err != nil {
		m.log.Error("upgrade guard", zap.Error(err))
	}
	if restored {
		m.log.Error("new agent version failed; previous binary restored, restarting into it")
		return ErrRestart
	}
	mk, err := readMarker(m.o.StateDir)
	if err != nil {
		m.log.Warn("read upgrade marker", zap.Error(err))
	}
	var deadline <-chan time.Time
	if mk != nil && mk.State == statePending {
		if mk.To == m.o.Version {
			m.pending = true
			t := time.NewTimer(time.Until(mk.Deadline))
			defer t.Stop()
			deadline = t.C
			m.log.Info("running a new version on probation", zap.String("version", mk.To), zap.Time("deadline", mk.Deadline))
		} else {
			// The swap did not take (we are still the old binary).
			mk.State, mk.Reason = stateFailed, fmt.Sprintf("%s did not start (still running %s)", mk.To, m.o.Version)
			if mk.Failed == nil {
				mk.Failed = map[string]string{}
			}
			mk.Failed[mk.To] = mk.Reason
			_ = writeMarker(m.o.StateDir, mk)
		}
	}
	if mk != nil && mk.State == stateFailed {
		m.report(mk.To, mk.SHA256, mk.AllPackagesHash, protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, mk.Reason)
	}
	probe := time.NewTicker(time.Second)
	defer probe.Stop()
	pinned := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-deadline:
			mk, err := readMarker(m.o.StateDir)
			if err == nil && mk != nil && mk.State == statePending {
				reason := fmt.Sprintf("%s did not connect and report healthy within %s; %s restored", mk.To, m.o.HealthBound, mk.From)
				if err := restore(m.o.StateDir, mk, reason); err != nil {
					m.log.Error("restore previous binary", zap.Error(err))
					continue
				}
				m.log.Error("new version not healthy in time; previous binary restored", zap.String("reason", reason))
				return ErrRestart
			}
			deadline = nil
		case <-probe.C:
			if m.pending && m.o.Healthy() {
				m.confirm()
				deadline = nil
			}
			if !pinned && !m.o.Kubernetes && m.o.Credential() != "" {
				// Pin the release key as soon as the agent is enrolled.
				pinned = m.PinKey(ctx) == nil
			}
		case <-m.wakeup:
			m.mu.Lock()
			p := m.offer
			m.offer = nil
			m.mu.Unlock()
			if p == nil {
				continue
			}
			if err := m.install(ctx, p); err != nil {
				if errors.Is(err, ErrRestart) {
					return err
				}
			}
		}
	}
}

// confirm marks the running new version good.
func (m *Manager) confirm() {
	m.pending = false
	mk, err := readMarker(m.o.StateDir)
	if err != nil || mk == nil || mk.State != statePending {
		return
	}
	mk.State, mk.Reason = stateGood, ""
	if err := writeMarker(m.o.StateDir, mk); err != nil {
		m.log.Error("mark upgrade good", zap.Error(err))
		return
	}
	m.log.Info("upgrade confirmed: connected and healthy", zap.String("version", mk.To))
	m.report(mk.To, mk.SHA256, mk.AllPackagesHash, protobufs.PackageStatusEnum_PackageStatusEnum_Installed, "")
}

// install handles one offer.
func (m *Manager) install(ctx context.Context, p *protobufs.PackagesAvailable) error {
	pkg := p.GetPackages()[""]
	if pkg == nil || pkg.File == nil {
		return nil
	}
	v, all := pkg.Version, p.AllPackagesHash
	want := hex.EncodeToString(pkg.File.ContentHash)
	fail := func(msg string) error {
		m.log.Warn("upgrade refused", zap.String("version", v), zap.String("reason", msg))
		m.report(v, want, all, protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, msg)
		return errors.New(msg)
	}
	switch {
	case m.o.Kubernetes:
		return fail(ManagedByDaemonSet)
	case v == m.o.Version:
		m.report(v, want, all, protobufs.PackageStatusEnum_PackageStatusEnum_Installed, "")
		return nil
	case m.pending:
		return fail(fmt.Sprintf("%s is still on probation; try again once it is healthy", m.o.Version))
	}
	if mk, _ := readMarker(m.o.StateDir); mk != nil && mk.Failed[v] != "" {
		return fail("not retried: " + mk.Failed[v])
	}
	pub, err := m.pinnedKey(ctx)
	if err != nil {
		return fail(fmt.Sprintf("no release key: %v", err))
	}
	if len(pkg.File.ContentHash) != sha256.Size {
		return fail(fmt.Sprintf("offer has no sha256 content hash (%d bytes)", len(pkg.File.ContentHash)))
	}
	if !ed25519.Verify(pub, SignedMessage(v, want), pkg.File.Signature) {
		return fail(fmt.Sprintf("signature of %s (sha256 %s) does not verify with the pinned release key: nothing replaced", v, want))
	}
	m.report(v, want, all, protobufs.PackageStatusEnum_PackageStatusEnum_Installing, "")
	tmp := m.o.Executable + ".download"
	defer os.Remove(tmp)
	var got string
	delay := m.o.RetryDelay
	for attempt := 1; ; attempt++ {
		got, err = m.download(ctx, pkg.File.DownloadUrl, tmp)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= m.o.Attempts {
			return fail(fmt.Sprintf("download %s: %v (after %d attempts): nothing replaced", v, err, attempt))
		}
		m.log.Warn("download of release failed; retrying", zap.String("version", v), zap.Int("attempt", attempt), zap.Duration("in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	if got != want {
		return fail(fmt.Sprintf("content hash mismatch: downloaded %s has sha256 %s, the signed offer says %s: nothing replaced", v, got, want))
	}
	return m.swap(v, want, all)
}

// download fetches u into path and returns the hex sha256 of its bytes.
func (m *Manager) download(ctx context.Context, u, path string) (string, error) {
	base, err := url.Parse(m.o.FleetURL)
	if err != nil {
		return "", fmt.Errorf("fleet url: %w", err)
	}
	ref, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("download url %q: %w", u, err)
	}
	full := base.ResolveReference(ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, full.String(), nil)
	if err != nil {
		return "", fmt.Errorf("build download: %w", err)
	}
	if full.Scheme == base.Scheme && full.Host == base.Host {
		if c := m.o.Credential(); c != "" {
			req.Header.Set("Authorization", "Bearer "+c)
		}
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d from %s", resp.StatusCode, full.Redacted())
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o700)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", path, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("cut after %d bytes: %w", n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return "", fmt.Errorf("cut after %d of %d bytes", n, resp.ContentLength)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// swap keeps the running binary as .prev, moves the verified download
// over the binary (rename: atomic), records the pending upgrade and asks
// for a restart.
func (m *Manager) swap(v, sum string, all []byte) error {
	exe := m.o.Executable
	prev := exe + ".prev"
	tmp := exe + ".download"
	if err := copyAtomic(exe, prev); err != nil {
		m.report(v, sum, all, protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, "keep previous binary: "+err.Error())
		return err
	}
	mk, _ := readMarker(m.o.StateDir)
	failed := map[string]string{}
	if mk != nil && mk.Failed != nil {
		failed = mk.Failed
	}
	nm := &marker{State: statePending, From: m.o.Version, To: v, SHA256: sum, Exe: exe, Prev: prev,
		Deadline: time.Now().Add(m.o.HealthBound), Failed: failed, AllPackagesHash: all}
	if err := writeMarker(m.o.StateDir, nm); err != nil {
		m.report(v, sum, all, protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, err.Error())
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, exe); err != nil {
		nm.State, nm.Reason = stateFailed, "replace binary: "+err.Error()
		_ = writeMarker(m.o.StateDir, nm)
		m.report(v, sum, all, protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed, nm.Reason)
		return err
	}
	syncDir(filepath.Dir(exe))
	m.log.Info("new agent binary installed; restarting into it", zap.String("version", v), zap.String("previous", m.o.Version), zap.String("binary", exe))
	m.report(v, sum, all, protobufs.PackageStatusEnum_PackageStatusEnum_Installing, "installed; restarting into "+v)
	time.Sleep(500 * time.Millisecond) // let the status go out
	return ErrRestart
}

// pinnedKey returns the release key pinned in the state dir, fetching
// and pinning it from the fleet (with the agent's credential) the first
// time. A pinned key is never replaced.
func (m *Manager) pinnedKey(ctx context.Context) (ed25519.PublicKey, error) {
	path := filepath.Join(m.o.StateDir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return parseKey(b)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	b, err = m.fetchKey(ctx)
	if err != nil {
		return nil, err
	}
	pub, err := parseKey(b)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pin release key: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("pin release key: %w", err)
	}
	m.log.Info("release key pinned", zap.String("path", path))
	return pub, nil
}

// PinKey fetches and pins the release key if none is pinned yet (call it
// once enrolled, so that the key is pinned before any offer).
func (m *Manager) PinKey(ctx context.Context) error {
	_, err := m.pinnedKey(ctx)
	return err
}

func (m *Manager) fetchKey(ctx context.Context) ([]byte, error) {
	u := strings.TrimSuffix(m.o.FleetURL, "/") + "/api/v1/release-key"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	c := m.o.Credential()
	if c == "" {
		return nil, errors.New("not enrolled yet")
	}
	req.Header.Set("Authorization", "Bearer "+c)
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch release key: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("fetch release key: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch release key: HTTP %d", resp.StatusCode)
	}
	return b, nil
}

func parseKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("release key: no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("release key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("release key is %T, want Ed25519", k)
	}
	return pub, nil
}
