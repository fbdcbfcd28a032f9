package release

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
)

// Errors.
var (
	// ErrInvalid: the request is the caller's fault (bad version, selector,
	// stages, URL); the message names the field.
	ErrInvalid = errors.New("invalid release request")
	// ErrUnsupported: the store keeps no releases.
	ErrUnsupported = errors.New("this fleet store keeps no releases")
)

var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

// MaxSize bounds an uploaded or fetched release (bytes).
const MaxSize = 512 << 20

// Options configures a Manager.
type Options struct {
	// Store is required; it must implement store.Releases.
	Store store.Store
	// DataDir holds the release key (KeyFile) and the uploaded binaries
	// (releases/). Required.
	DataDir string
	// FleetURL is the fleet's public base URL; download URLs of uploaded
	// releases point below it. Required.
	FleetURL string
	Logger   *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Tick is how often rollouts are evaluated; 0 means 500ms.
	Tick time.Duration
	// AgentTimeout is how long an agent of a running stage has to come
	// back with the new version, connected and healthy, before it counts
	// as failed. 0 means 3m (the agent's own health bound is 60s).
	AgentTimeout time.Duration
	// PushRetry is how long to wait for an agent to act on an offer before
	// offering again. 0 means 30s.
	PushRetry time.Duration
	// Leader reports whether this replica advances rollouts; nil means
	// always.
	Leader func() bool
	// HTTPClient fetches releases registered by URL; nil means a client
	// with a 5 minute timeout.
	HTTPClient *http.Client
	// Resync is how often the manager re-reads every release assignment
	// (one listing per project) into the memory that spares status
	// reports a store read; agents connected here whose assignment
	// appeared or changed meanwhile are checked then. 0 means 1m.
	Resync time.Duration
}

// Manager keeps releases and drives release rollouts. Its methods are
// goroutine-safe.
type Manager struct {
	o   Options
	st  store.Store
	rs  store.Releases
	log *zap.Logger
	key ed25519.PrivateKey
	dir string

	mu      sync.Mutex // serializes rollout writes of this process
	started time.Time

	asg assigned // which agents have a release assignment

	qmu    sync.Mutex
	queue  map[string]queued // agent id → its record when known, full check
	pushed map[string]pushRec
	signal chan struct{}
	kick   chan struct{}
	pusher Pusher
}

type pushRec struct {
	version string
	at      time.Time
}

// New loads (or creates) the release key and returns a manager; call Run
// to drive rollouts.
func New(o Options) (*Manager, error) {
	if o.Store == nil || o.DataDir == "" || o.FleetURL == "" {
		return nil, errors.New("release: Store, DataDir and FleetURL are required")
	}
	rs, ok := o.Store.(store.Releases)
	if !ok {
		return nil, ErrUnsupported
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tick <= 0 {
		o.Tick = 500 * time.Millisecond
	}
	if o.AgentTimeout <= 0 {
		o.AgentTimeout = 3 * time.Minute
	}
	if o.PushRetry <= 0 {
		o.PushRetry = 30 * time.Second
	}
	if o.Resync <= 0 {
		o.Resync = time.Minute
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	key, err := LoadOrCreateKey(filepath.Join(o.DataDir, KeyFile))
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.DataDir, "releases")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create release dir: %w", err)
	}
	return &Manager{
		o: o, st: o.Store, rs: rs, log: o.Logger, key: key, dir: dir, started: o.Now(),
		queue: map[string]queued{}, pushed: map[string]pushRec{},
		signal: make(chan struct{}, 1), kick: make(chan struct{}, 1),
	}, nil
}

// PublicKey is the release verification key agents pin.
func (m *Manager) PublicKey() ed25519.PublicKey { return m.key.Public().(ed25519.PublicKey) }

func (m *Manager) path(version string) string { return filepath.Join(m.dir, version+".bin") }

// Upload stores a release binary read from r, hashes and signs it.
// Errors wrap ErrInvalid for a bad version, store.ErrConflict when the
// version exists.
func (m *Manager) Upload(ctx context.Context, version, platform string, r io.Reader, actor string) (*store.Release, error) {
	if !versionRE.MatchString(version) {
		return nil, fmt.Errorf("%w: version: %q must be 1-64 letters, digits, '.', '_', '+' or '-'", ErrInvalid, version)
	}
	if _, err := m.rs.ReleaseByVersion(ctx, version); err == nil {
		return nil, fmt.Errorf("release %s already exists: %w", version, store.ErrConflict)
	}
	f, err := os.CreateTemp(m.dir, ".upload-*")
	if err != nil {
		return nil, fmt.Errorf("create release file: %w", err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, MaxSize+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("store release %s: %w", version, err)
	}
	if n > MaxSize || n == 0 {
		return nil, fmt.Errorf("%w: release must be 1 byte to %d MiB, got %d bytes", ErrInvalid, MaxSize>>20, n)
	}
	if err := os.Rename(f.Name(), m.path(version)); err != nil {
		return nil, fmt.Errorf("store release %s: %w", version, err)
	}
	return m.create(ctx, version, platform, hex.EncodeToString(h.Sum(nil)), n, "", actor)
}

// RegisterURL registers a release that agents download from url: the
// fleet fetches it once to hash and sign it.
func (m *Manager) RegisterURL(ctx context.Context, version, platform, url, actor string) (*store.Release, error) {
	if !versionRE.MatchString(version) {
		return nil, fmt.Errorf("%w: version: %q must be 1-64 letters, digits, '.', '_', '+' or '-'", ErrInvalid, version)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil || (req.URL.Scheme != "https" && req.URL.Scheme != "http") {
		return nil, fmt.Errorf("%w: url: %q is not an http(s) URL", ErrInvalid, url)
	}
	resp, err := m.o.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: fetch %s: %w", ErrInvalid, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: fetch %s: HTTP %d", ErrInvalid, url, resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(resp.Body, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: fetch %s: %w", ErrInvalid, url, err)
	}
	if n > MaxSize || n == 0 {
		return nil, fmt.Errorf("%w: release must be 1 byte to %d MiB, got %d bytes", ErrInvalid, MaxSize>>20, n)
	}
	return m.create(ctx, version, platform, hex.EncodeToString(h.Sum(nil)), n, url, actor)
}

func (m *Manager) create(ctx context.Context, version, platform, sum string, size int64, url, actor string) (*store.Release, error) {
	if platform == "" {
		platform = runtime.GOOS + "/" + runtime.GOARCH
	}
	rel := &store.Release{
		Version: version, SHA256: sum, Signature: Sign(m.key, version, sum), Size: size, URL: url,
		Platform: platform, CreatedBy: actor, CreatedAt: m.o.Now().UTC(),
	}
	if err := m.rs.CreateRelease(ctx, rel); err != nil {
		return nil, err
	}
	m.log.Info("release registered", zap.String("version", version), zap.String("sha256", sum), zap.Int64("bytes", size))
	return rel, nil
}

// Releases lists the releases, newest first.
func (m *Manager) Releases(ctx context.Context) ([]*store.Release, error) {
	rs, err := m.rs.ListReleases(ctx)
	if rs == nil {
		rs = []*store.Release{}
	}
	return rs, err
}

// Open returns an uploaded release's binary for download (the caller
// closes it); store.ErrNotFound for unknown versions or releases kept
// elsewhere (URL).
func (m *Manager) Open(ctx context.Context, version string) (*os.File, *store.Release, error) {
	rel, err := m.rs.ReleaseByVersion(ctx, version)
	if err != nil {
		return nil, nil, err
	}
	if rel.URL != "" {
		return nil, nil, fmt.Errorf("release %s is served from %s: %w", version, rel.URL, store.ErrNotFound)
	}
	f, err := os.Open(m.path(version))
	if err != nil {
		return nil, nil, fmt.Errorf("open release %s: %w", version, err)
	}
	return f, rel, nil
}
