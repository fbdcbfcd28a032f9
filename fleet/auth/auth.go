package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Options configures an Authenticator.
type Options struct {
	Keys   *token.KeySet
	Store  store.Store
	Issuer string // the fleet's URL, written as iss
	Logger *zap.Logger
	// Registerer receives the auth metrics; nil means none.
	Registerer prometheus.Registerer
	// RefreshInterval is how often revocations are re-read from the store
	// (they may come from another replica) while no bus carries them.
	// 0 means 1s.
	RefreshInterval time.Duration
	// Bus, if set, carries revocations between replicas at once: Revoke
	// publishes the jti on store.TopicRevoke, and Run closes what uses a
	// jti revoked anywhere as soon as it is notified. While the bus is
	// live the store is re-read only every FallbackInterval.
	Bus store.Bus
	// FallbackInterval is the slower re-read while Bus is live; 0 means
	// 4s, so that the 5 s promise for revocations holds even when a
	// notification is lost (the re-read is one indexed query).
	FallbackInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Authenticator verifies tokens against the key set, revocations and the
// project list, and issues new tokens. All methods are goroutine-safe.
type Authenticator struct {
	o       Options
	log     *zap.Logger
	mu      sync.RWMutex
	revoked map[string]struct{}
	since   time.Time
	// projects caches known project ids; misses go to the store.
	projects sync.Map
	subsMu   sync.Mutex
	subs     []func(jti string)
	rejected *prometheus.CounterVec
}

// New returns an Authenticator with the current revocations loaded.
func New(ctx context.Context, o Options) (*Authenticator, error) {
	if o.Keys == nil || o.Store == nil {
		return nil, errors.New("auth: Keys and Store are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = time.Second
	}
	if o.FallbackInterval <= 0 {
		o.FallbackInterval = 4 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &Authenticator{o: o, log: o.Logger, revoked: map[string]struct{}{}}
	a.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetprof_auth_rejected_total",
		Help: "Tokens rejected, by reason.",
	}, []string{"reason"})
	if o.Registerer != nil {
		if err := o.Registerer.Register(a.rejected); err != nil {
			return nil, fmt.Errorf("register auth metrics: %w", err)
		}
	}
	if err := a.refresh(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// OnRevoke registers f to be called (from any goroutine) with the jti of
// every token that becomes revoked, here or on another replica.
func (a *Authenticator) OnRevoke(f func(jti string)) {
	a.subsMu.Lock()
	defer a.subsMu.Unlock()
	a.subs = append(a.subs, f)
}

// Run takes revocations from the bus and re-reads them from the store
// (every RefreshInterval, or FallbackInterval while the bus is live)
// until ctx ends.
func (a *Authenticator) Run(ctx context.Context) error {
	t := time.NewTicker(a.o.RefreshInterval)
	defer t.Stop()
	var events <-chan store.Event
	if a.o.Bus != nil {
		events = a.o.Bus.Subscribe(ctx, store.TopicRevoke)
	}
	last := time.Now()
	refresh := func() {
		last = time.Now()
		if err := a.refresh(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("refresh revocations", zap.Error(err))
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			for _, jti := range ev.IDs {
				a.revoked1(jti)
			}
			if ev.Resync {
				refresh()
			}
		case <-t.C:
			if a.o.Bus != nil && a.o.Bus.Live() && time.Since(last) < a.o.FallbackInterval {
				continue
			}
			refresh()
		}
	}
}

// revoked1 records a jti revoked elsewhere and closes what uses it.
func (a *Authenticator) revoked1(jti string) {
	a.mu.Lock()
	_, had := a.revoked[jti]
	a.revoked[jti] = struct{}{}
	a.mu.Unlock()
	if !had {
		a.notify(jti)
	}
}

func (a *Authenticator) refresh(ctx context.Context) error {
	a.mu.RLock()
	since := a.since
	a.mu.RUnlock()
	now := a.o.Now()
	// Overlap by a few seconds: clocks of replicas are not exact.
	from := since.Add(-5 * time.Second)
	if since.IsZero() {
		from = time.Time{}
	}
	ids, err := a.o.Store.RevokedSince(ctx, from)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	var fresh []string
	a.mu.Lock()
	for _, id := range ids {
		if _, ok := a.revoked[id]; !ok {
			a.revoked[id] = struct{}{}
			fresh = append(fresh, id)
		}
	}
	a.since = now
	a.mu.Unlock()
	if !since.IsZero() {
		for _, id := range fresh {
			a.notify(id)
		}
	}
	return nil
}

func (a *Authenticator) notify(jti string) {
	a.subsMu.Lock()
	subs := append([]func(string){}, a.subs...)
	a.subsMu.Unlock()
	for _, f := range subs {
		f(jti)
	}
}

// IsRevoked reports whether the jti is revoked.
func (a *Authenticator) IsRevoked(jti string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.revoked[jti]
	return ok
}

// Revoke revokes a token by id in the store and closes what uses it.
func (a *Authenticator) Revoke(ctx context.Context, jti string) error {
	if err := a.o.Store.RevokeToken(ctx, jti, a.o.Now()); err != nil {
		return err
	}
	a.revoked1(jti)
	if a.o.Bus != nil && store.ValidID(jti) {
		// Other replicas learn it at once. A pooled connection may have
		// died since the write: retry briefly; past that they read it
		// from the store at their next re-read.
		var err error
		for try := range 3 {
			if try > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
			if err = a.o.Bus.Publish(ctx, store.TopicRevoke, jti); err == nil || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			a.log.Warn("publish revocation", zap.String("token", jti), zap.Error(err))
		}
	}
	return nil
}

// Bearer extracts the token from an Authorization header value.
func Bearer(header string) (string, bool) {
	const p = "bearer "
	if len(header) < len(p) || !strings.EqualFold(header[:len(p)], p) {
		return "", false
	}
	return strings.TrimSpace(header[len(p):]), true
}

// Verify checks a raw token fully: signature and time (token.Verify),
// revocation, and that its project exists. Errors wrap token sentinels.
func (a *Authenticator) Verify(ctx context.Context, raw string) (*token.Claims, error) {
	c, err := a.o.Keys.Verify(raw, a.o.Now())
	return a.checked(ctx, c, err)
}

// VerifyRecorded is Verify for a token whose Sum the caller may have
// recorded when the fleet accepted it before (token.KeySet.VerifyRecorded):
// the signature is not checked again when the sum matches; revocation
// and the project still are.
func (a *Authenticator) VerifyRecorded(ctx context.Context, raw string, recorded func(*token.Claims) ([32]byte, bool)) (*token.Claims, error) {
	c, err := a.o.Keys.VerifyRecorded(raw, a.o.Now(), recorded)
	return a.checked(ctx, c, err)
}

// checked finishes a verification: revocation, then the project.
func (a *Authenticator) checked(ctx context.Context, c *token.Claims, err error) (*token.Claims, error) {
	if err != nil {
		a.reject(err)
		return nil, err
	}
	if a.IsRevoked(c.ID) {
		a.reject(token.ErrRevoked)
		return nil, fmt.Errorf("token %s: %w", c.ID, token.ErrRevoked)
	}
	if c.Kind() != token.KindAdmin {
		if err := a.projectExists(ctx, c.ProjectID); err != nil {
			a.reject(err)
			return nil, err
		}
	}
	return c, nil
}

func (a *Authenticator) reject(err error) {
	reason := "other"
	for _, s := range []struct {
		e error
		n string
	}{{token.ErrMalformed, "malformed"}, {token.ErrAlgorithm, "algorithm"}, {token.ErrUnknownKey, "unknown_key"},
		{token.ErrSignature, "signature"}, {token.ErrExpired, "expired"}, {token.ErrRevoked, "revoked"},
		{token.ErrUnknownProject, "unknown_project"}, {token.ErrScope, "scope"}} {
		if errors.Is(err, s.e) {
			reason = s.n
			break
		}
	}
	a.rejected.WithLabelValues(reason).Inc()
}

func (a *Authenticator) projectExists(ctx context.Context, id string) error {
	if _, ok := a.projects.Load(id); ok {
		return nil
	}
	if _, err := a.o.Store.ProjectByID(ctx, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("project %q: %w", id, token.ErrUnknownProject)
		}
		return fmt.Errorf("look up project: %w", err)
	}
	a.projects.Store(id, struct{}{})
	return nil
}

// AuthorizeWrite checks a bearer token for the writeProfiles scope (a
// project API token or an agent credential) and returns its project.
func (a *Authenticator) AuthorizeWrite(ctx context.Context, raw string) (string, error) {
	c, err := a.Verify(ctx, raw)
	if err != nil {
		return "", err
	}
	if !c.WriteProfiles || c.Kind() == token.KindBootstrap || c.Kind() == token.KindAdmin {
		a.reject(token.ErrScope)
		return "", fmt.Errorf("token %s (%s) cannot write profiles: %w", c.ID, c.Kind(), token.ErrScope)
	}
	return c.ProjectID, nil
}

// Principal is who an admin API request acts as.
type Principal struct {
	TokenID  string
	Name     string
	ReadOnly bool
}

// Admin checks a bearer token for the admin scope.
func (a *Authenticator) Admin(ctx context.Context, raw string) (*Principal, error) {
	c, err := a.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	if c.Kind() != token.KindAdmin {
		a.reject(token.ErrScope)
		return nil, fmt.Errorf("token %s (%s) is not an admin token: %w", c.ID, c.Kind(), token.ErrScope)
	}
	name := "admin:" + c.ID
	if t, err := a.o.Store.TokenByID(ctx, c.ID); err == nil {
		name = t.Name
	}
	return &Principal{TokenID: c.ID, Name: name, ReadOnly: c.ReadOnly}, nil
}

// IssueRequest describes a token to create and record.
type IssueRequest struct {
	Kind      token.Kind
	ProjectID string
	Name      string
	AgentID   string
	TTL       time.Duration
	Labels    map[string]string
	MaxUses   int
	ReadOnly  bool
	CreatedBy string
}

// Issue signs a token and stores its metadata (never the token).
func (a *Authenticator) Issue(ctx context.Context, r IssueRequest) (string, *store.Token, error) {
	now := a.o.Now()
	raw, c, err := a.o.Keys.Issue(token.IssueOptions{
		Kind: r.Kind, Issuer: a.o.Issuer, ProjectID: r.ProjectID, Subject: r.AgentID,
		TTL: r.TTL, Labels: r.Labels, MaxUses: r.MaxUses, ReadOnly: r.ReadOnly, Now: now,
	})
	if err != nil {
		return "", nil, err
	}
	t := &store.Token{
		ID: c.ID, ProjectID: r.ProjectID, Name: r.Name, Kind: store.TokenKind(r.Kind), Labels: r.Labels,
		AgentID: r.AgentID, KeyID: a.o.Keys.ActiveID(), MaxUses: r.MaxUses, ReadOnly: r.ReadOnly,
		CreatedBy: r.CreatedBy, CreatedAt: now.UTC(),
	}
	if c.ExpiresAt != nil {
		e := c.ExpiresAt.Time.UTC()
		t.ExpiresAt = &e
	}
	if err := a.o.Store.CreateToken(ctx, t); err != nil {
		return "", nil, err
	}
	return raw, t, nil
}

// Keys returns the key set (for JWKS and key rotation).
func (a *Authenticator) Keys() *token.KeySet { return a.o.Keys }
