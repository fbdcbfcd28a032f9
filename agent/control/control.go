package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/fleetprof/fleetprof/internal/describe"
	"github.com/fleetprof/fleetprof/internal/token"
)

// Errors.
var (
	// ErrNoCredential: neither a stored credential nor a bootstrap token.
	ErrNoCredential = errors.New("no credential: start the agent once with --bootstrap-token or --bootstrap-token-file")
	// ErrRejected: the fleet refused a credential (401).
	ErrRejected = errors.New("credential rejected by the fleet")
)

// Callbacks connect the control loop to the rest of the agent. Each is
// called from the OpAMP client's goroutine, never concurrently with
// itself; nil fields are no-ops (SetDefaults).
type Callbacks struct {
	// OnCredential is called with the agent's credential whenever a new
	// one is proven (and once at start with the stored one).
	OnCredential func(token string)
	// OnRemoteConfig applies a pushed config. It returns the effective
	// config to report, or an error (reported as FAILED; the agent must
	// keep its previous config).
	OnRemoteConfig func(ctx context.Context, cfg *protobufs.AgentRemoteConfig) (effective []byte, err error)
	// EffectiveConfig returns the config in effect now (reported on
	// connect and on request).
	EffectiveConfig func() []byte
	// EffectiveConfigType is the content type of the effective config's
	// bodies; default "application/yaml".
	EffectiveConfigType string
	// OnPackages handles a PackagesAvailable offer (agent upgrades).
	OnPackages func(ctx context.Context, p *protobufs.PackagesAvailable, report func(*protobufs.PackageStatuses))
}

// SetDefaults fills nil callbacks with no-ops.
func (c *Callbacks) SetDefaults() {
	if c.OnCredential == nil {
		c.OnCredential = func(string) {}
	}
	if c.OnRemoteConfig == nil {
		c.OnRemoteConfig = func(context.Context, *protobufs.AgentRemoteConfig) ([]byte, error) {
			return nil, errors.New("remote config not supported")
		}
	}
	if c.EffectiveConfig == nil {
		c.EffectiveConfig = func() []byte { return nil }
	}
	if c.EffectiveConfigType == "" {
		c.EffectiveConfigType = "application/yaml"
	}
	if c.OnPackages == nil {
		c.OnPackages = func(context.Context, *protobufs.PackagesAvailable, func(*protobufs.PackageStatuses)) {}
	}
}

// Options configures a Client.
type Options struct {
	// FleetURL is the fleet's base URL (http:// or https://).
	FleetURL string
	// BootstrapToken enrolls the agent when it has no credential yet, or
	// when its credential expired or was revoked.
	BootstrapToken string
	// StateDir holds the instance uid and the credential (0600).
	StateDir string
	// TLSConfig for https fleets; nil means system roots.
	TLSConfig *tls.Config
	// Description of this agent (InstanceID is filled in).
	Description describe.Agent
	// HeartbeatInterval; 0 means 30s (the fleet may change it).
	HeartbeatInterval time.Duration
	// ProbeTimeout bounds the check of a new credential. 0 means 10s.
	ProbeTimeout time.Duration
	Logger       *zap.Logger
	Callbacks    Callbacks
	// Packages, when set, makes the client advertise AcceptsPackages and
	// ReportsPackageStatuses (opamp-go requires a state provider for them);
	// offers then reach Callbacks.OnPackages.
	Packages types.PackagesStateProvider
}

// Status is a snapshot of the control connection for health endpoints.
type Status struct {
	Connected      bool      `json:"connected"`
	Enrolled       bool      `json:"enrolled"`
	LastError      string    `json:"lastError,omitempty"`
	CredentialExp  time.Time `json:"credentialExpiresAt,omitempty"`
	NeedsEnroll    bool      `json:"needsEnroll,omitempty"`
	RotationFailed string    `json:"rotationFailed,omitempty"`
}

// Client runs the agent's OpAMP connection.
type Client struct {
	o     Options
	log   *zap.Logger
	st    state
	uid   [16]byte
	http  *http.Client
	wsURL string

	mu         sync.Mutex
	credential string // proven agent credential, "" before enrollment
	status     Status
	health     *protobufs.ComponentHealth
	settingsSt *protobufs.ConnectionSettingsStatus
	configSt   *protobufs.RemoteConfigStatus
	cur        client.OpAMPClient

	restart chan struct{}
	probeMu sync.Mutex
}

// New loads the agent's state (creating its instance uid) and returns a
// client ready to Run.
func New(o Options) (*Client, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 10 * time.Second
	}
	o.Callbacks.SetDefaults()
	u, err := url.Parse(o.FleetURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("fleet address %q: want http://host:port or https://host:port", o.FleetURL)
	}
	ws := *u
	ws.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	ws.Path = strings.TrimSuffix(u.Path, "/") + "/v1/opamp"
	c := &Client{
		o: o, log: o.Logger, st: state{dir: o.StateDir}, wsURL: ws.String(),
		restart: make(chan struct{}, 1),
		http:    &http.Client{Timeout: o.ProbeTimeout, Transport: &http.Transport{TLSClientConfig: o.TLSConfig, Proxy: http.ProxyFromEnvironment}},
	}
	if c.uid, err = c.st.instanceUID(); err != nil {
		return nil, err
	}
	if c.credential, err = c.st.read("credential"); err != nil {
		return nil, err
	}
	if c.credential == "" && o.BootstrapToken == "" {
		return nil, ErrNoCredential
	}
	c.status.Enrolled = c.credential != ""
	c.status.CredentialExp = expiry(c.credential)
	c.o.Description.InstanceID = c.InstanceID()
	return c, nil
}

// InstanceID is the agent's id (hex of the OpAMP instance uid).
func (c *Client) InstanceID() string { return fmt.Sprintf("%x", c.uid[:]) }

// Credential returns the proven credential ("" before enrollment).
func (c *Client) Credential() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.credential
}

// Status returns a snapshot for health endpoints.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// SetHealth reports the agent's health to the fleet.
func (c *Client) SetHealth(healthy bool, status, lastError string) {
	h := &protobufs.ComponentHealth{Healthy: healthy, Status: status, LastError: lastError, StatusTimeUnixNano: uint64(time.Now().UnixNano())}
	c.mu.Lock()
	c.health = h
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		_ = cur.SetHealth(h)
	}
}

// SetPackageStatuses reports package statuses (agent upgrades) to the
// fleet now, if connected; the state provider repeats them on reconnect.
func (c *Client) SetPackageStatuses(ps *protobufs.PackageStatuses) {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur != nil && c.o.Packages != nil {
		_ = cur.SetPackageStatuses(ps)
	}
}

// expiry reads exp from a JWT without verifying it (for messages only).
func expiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var c struct {
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil || c.Exp == 0 {
		return time.Time{}
	}
	return time.Unix(int64(c.Exp), 0)
}

// activeToken picks what to connect with: the credential, unless it is
// known to be dead and a bootstrap token can enroll again.
func (c *Client) activeToken() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.credential != "" && !c.status.NeedsEnroll {
		return c.credential, false
	}
	if c.o.BootstrapToken != "" {
		return c.o.BootstrapToken, true
	}
	return c.credential, false
}

// Run keeps the OpAMP connection up until ctx ends. It reconnects when the
// credential changes and falls back to the bootstrap token when the
// credential is rejected.
func (c *Client) Run(ctx context.Context) error {
	if cred := c.Credential(); cred != "" {
		c.o.Callbacks.OnCredential(cred)
	}
	for {
		tok, bootstrap := c.activeToken()
		if exp := expiry(tok); !bootstrap && !exp.IsZero() && time.Now().After(exp.Add(token.Leeway)) {
			c.markNeedsEnroll(fmt.Sprintf("credential expired at %s", exp.Format(time.RFC3339)))
			if c.o.BootstrapToken != "" {
				continue
			}
		}
		cl, err := c.start(ctx, tok)
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-c.restart:
		}
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = cl.Stop(stopCtx)
		cancel()
		c.mu.Lock()
		c.cur = nil
		c.status.Connected = false
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *Client) markNeedsEnroll(reason string) {
	c.mu.Lock()
	already := c.status.NeedsEnroll
	c.status.NeedsEnroll = true
	c.status.LastError = reason
	c.mu.Unlock()
	if already {
		return
	}
	if c.o.BootstrapToken != "" {
		c.log.Warn("agent credential is no longer valid; re-enrolling with the bootstrap token", zap.String("reason", reason))
	} else {
		c.log.Error("agent credential is no longer valid and there is no bootstrap token: this agent must be re-enrolled (restart it with --bootstrap-token or --bootstrap-token-file)", zap.String("reason", reason))
	}
}

func (c *Client) kick() {
	select {
	case c.restart <- struct{}{}:
	default:
	}
}

const capabilities = protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
	protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
	protobufs.AgentCapabilities_AgentCapabilities_AcceptsOpAMPConnectionSettings |
	protobufs.AgentCapabilities_AgentCapabilities_AcceptsOtherConnectionSettings |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsConnectionSettingsStatus |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat

func (c *Client) start(ctx context.Context, tok string) (client.OpAMPClient, error) {
	cl := client.NewWebSocket(&zapLogger{c.log.Sugar()})
	hb := c.o.HeartbeatInterval
	c.mu.Lock()
	health := c.health
	settingsSt := c.settingsSt
	configSt := c.configSt
	c.mu.Unlock()
	if health == nil {
		health = &protobufs.ComponentHealth{Healthy: true, Status: "starting"}
	}
	settings := types.StartSettings{
		OpAMPServerURL:               c.wsURL,
		Header:                       http.Header{"Authorization": []string{"Bearer " + tok}},
		TLSConfig:                    c.o.TLSConfig,
		InstanceUid:                  types.InstanceUid(c.uid),
		HeartbeatInterval:            &hb,
		LastConnectionSettingsStatus: settingsSt,
		RemoteConfigStatus:           configSt,
		Callbacks: types.Callbacks{
			OnConnect: func(context.Context) {
				c.mu.Lock()
				c.status.Connected = true
				c.mu.Unlock()
				c.log.Info("connected to fleet", zap.String("url", c.wsURL))
			},
			OnConnectFailed: c.onConnectFailed(tok),
			OnError: func(_ context.Context, e *protobufs.ServerErrorResponse) {
				c.mu.Lock()
				c.status.LastError = e.ErrorMessage
				c.mu.Unlock()
				if e.Type == protobufs.ServerErrorResponseType_ServerErrorResponseType_BadRequest {
					c.log.Error("the fleet refused this agent", zap.String("reason", e.ErrorMessage))
				} else {
					c.log.Warn("fleet error", zap.String("reason", e.ErrorMessage))
				}
			},
			OnOpampConnectionSettings: c.onSettings,
			OnMessage:                 c.onMessage(cl),
			GetEffectiveConfig: func(context.Context) (*protobufs.EffectiveConfig, error) {
				return effective(c.o.Callbacks.EffectiveConfig(), c.o.Callbacks.EffectiveConfigType), nil
			},
			SaveRemoteConfigStatus: func(_ context.Context, st *protobufs.RemoteConfigStatus) {
				c.mu.Lock()
				c.configSt = st
				c.mu.Unlock()
			},
		},
	}
	if err := cl.SetAgentDescription(describe.Encode(c.o.Description)); err != nil {
		return nil, fmt.Errorf("set agent description: %w", err)
	}
	if err := cl.SetHealth(health); err != nil {
		return nil, fmt.Errorf("set health: %w", err)
	}
	caps := capabilities
	if c.o.Packages != nil {
		// opamp-go checks the package capabilities against the state
		// provider, which it only learns at Start: they go in the start
		// settings together.
		caps |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsPackages | protobufs.AgentCapabilities_AgentCapabilities_ReportsPackageStatuses
		settings.PackagesStateProvider = c.o.Packages
		settings.Capabilities = caps
	} else if err := cl.SetCapabilities(&caps); err != nil {
		return nil, fmt.Errorf("set capabilities: %w", err)
	}
	if err := cl.Start(ctx, settings); err != nil {
		return nil, fmt.Errorf("start opamp client: %w", err)
	}
	c.mu.Lock()
	c.cur = cl
	c.mu.Unlock()
	return cl, nil
}

func effective(body []byte, contentType string) *protobufs.EffectiveConfig {
	if body == nil {
		return nil
	}
	return &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
		"": {Body: body, ContentType: contentType},
	}}}
}

// onConnectFailed finds out why a handshake was refused: a 401 means the
// credential is dead (expired or revoked); anything else is retried by
// opamp-go's jittered backoff, which honours Retry-After.
func (c *Client) onConnectFailed(tok string) func(context.Context, error) {
	var last time.Time
	return func(ctx context.Context, err error) {
		c.mu.Lock()
		c.status.Connected = false
		c.status.LastError = err.Error()
		c.mu.Unlock()
		if !errors.Is(err, websocket.ErrBadHandshake) {
			// No HTTP answer (the fleet is down or restarting, the
			// network failed): nothing was refused, so don't ask. After
			// a fleet restart every agent would otherwise cost it one
			// more token verification in the reconnect storm.
			c.log.Debug("fleet unreachable; retrying", zap.Error(err))
			return
		}
		if time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		code, perr := c.check(ctx, tok)
		if perr != nil || code != http.StatusUnauthorized {
			c.log.Info("fleet connection failed; retrying", zap.Error(err), zap.Int("status", code))
			return
		}
		if _, bootstrap := c.activeToken(); bootstrap {
			c.log.Error("bootstrap token rejected by the fleet (revoked, expired or used up); this agent cannot enroll")
			c.mu.Lock()
			c.status.LastError = "bootstrap token rejected"
			c.mu.Unlock()
			return
		}
		reason := "credential rejected by the fleet (revoked or expired)"
		if exp := expiry(tok); !exp.IsZero() && time.Now().After(exp) {
			reason = fmt.Sprintf("credential expired at %s", exp.Format(time.RFC3339))
		}
		c.markNeedsEnroll(reason)
		if c.o.BootstrapToken != "" {
			c.kick()
		}
	}
}

// check asks the fleet whether it would admit tok, without side effects:
// a GET without a WebSocket upgrade is authenticated (401 when refused)
// and then fails the upgrade (400).
func (c *Client) check(ctx context.Context, tok string) (int, error) {
	u := strings.Replace(strings.Replace(c.wsURL, "wss://", "https://", 1), "ws://", "http://", 1)
	ctx, cancel := context.WithTimeout(ctx, c.o.ProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, fmt.Errorf("build check: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("check fleet: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// probe sends one plain-HTTP OpAMP message with tok and returns the status.
// A 200 proves the token to the fleet.
func (c *Client) probe(ctx context.Context, tok string) (int, error) {
	c.probeMu.Lock()
	defer c.probeMu.Unlock()
	msg := &protobufs.AgentToServer{InstanceUid: c.uid[:], Capabilities: uint64(capabilities), AgentDescription: describe.Encode(c.o.Description)}
	body, err := proto.Marshal(msg)
	if err != nil {
		return 0, fmt.Errorf("encode probe: %w", err)
	}
	u := strings.Replace(strings.Replace(c.wsURL, "wss://", "https://", 1), "ws://", "http://", 1)
	ctx, cancel := context.WithTimeout(ctx, c.o.ProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build probe: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("probe fleet: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		var out protobufs.ServerToAgent
		if err := proto.Unmarshal(b, &out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode probe reply: %w", err)
		}
		if e := out.ErrorResponse; e != nil && e.Type == protobufs.ServerErrorResponseType_ServerErrorResponseType_BadRequest {
			return http.StatusUnauthorized, fmt.Errorf("%w: %s", ErrRejected, e.ErrorMessage)
		}
	}
	return resp.StatusCode, nil
}

func bearerOf(h *protobufs.Headers) string {
	if h == nil {
		return ""
	}
	for _, x := range h.Headers {
		if strings.EqualFold(x.Key, "Authorization") {
			v := strings.TrimSpace(x.Value)
			if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
				return strings.TrimSpace(v[7:])
			}
		}
	}
	return ""
}

// onSettings handles a credential offer: prove the candidate by connecting
// with it, then keep it (0600) and reconnect; on failure keep the old one
// and report FAILED (opamp-go reports the returned error).
func (c *Client) onSettings(ctx context.Context, s *protobufs.OpAMPConnectionSettings) error {
	cand := bearerOf(s.GetHeaders())
	if cand == "" {
		return nil // heartbeat-only settings
	}
	if cand == c.Credential() {
		return nil
	}
	code, err := c.probe(ctx, cand)
	if err != nil || code != http.StatusOK {
		msg := fmt.Sprintf("new credential does not work (status %d): keeping the current one", code)
		if err != nil {
			msg = fmt.Sprintf("new credential does not work: %v: keeping the current one", err)
		}
		c.log.Warn("credential rotation failed", zap.String("reason", msg))
		c.mu.Lock()
		c.status.RotationFailed = msg
		c.mu.Unlock()
		return errors.New(msg)
	}
	if err := c.st.write("credential", cand); err != nil {
		return fmt.Errorf("store new credential: %w", err)
	}
	c.mu.Lock()
	first := c.credential == ""
	c.credential = cand
	c.status.Enrolled = true
	c.status.NeedsEnroll = false
	c.status.RotationFailed = ""
	c.status.LastError = ""
	c.status.CredentialExp = expiry(cand)
	c.settingsSt = &protobufs.ConnectionSettingsStatus{Status: protobufs.ConnectionSettingsStatuses_ConnectionSettingsStatuses_APPLIED}
	c.mu.Unlock()
	if first {
		c.log.Info("enrolled; credential stored", zap.String("agent", c.InstanceID()), zap.Time("expires", expiry(cand)))
	} else {
		c.log.Info("credential rotated", zap.Time("expires", expiry(cand)))
	}
	c.o.Callbacks.OnCredential(cand)
	c.kick() // reconnect with the proven credential
	return nil
}

func (c *Client) onMessage(cl client.OpAMPClient) func(context.Context, *types.MessageData) {
	return func(ctx context.Context, m *types.MessageData) {
		if m.RemoteConfig != nil {
			c.applyRemoteConfig(ctx, cl, m.RemoteConfig)
		}
		if m.PackagesAvailable != nil {
			c.o.Callbacks.OnPackages(ctx, m.PackagesAvailable, func(ps *protobufs.PackageStatuses) { _ = cl.SetPackageStatuses(ps) })
		}
	}
}

// applyingAfter is how long applying a remote config may take before the
// agent reports APPLYING (a variable for tests).
var applyingAfter = 250 * time.Millisecond

func (c *Client) applyRemoteConfig(ctx context.Context, cl client.OpAMPClient, rc *protobufs.AgentRemoteConfig) {
	c.mu.Lock()
	prev := c.configSt
	c.mu.Unlock()
	if prev != nil && bytes.Equal(prev.LastRemoteConfigHash, rc.ConfigHash) && prev.Status != protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING {
		return // already handled this exact config
	}
	set := func(st protobufs.RemoteConfigStatuses, msg string) {
		s := &protobufs.RemoteConfigStatus{LastRemoteConfigHash: rc.ConfigHash, Status: st, ErrorMessage: msg}
		c.mu.Lock()
		c.configSt = s
		c.mu.Unlock()
		_ = cl.SetRemoteConfigStatus(s)
	}
	// APPLYING is reported only when applying takes a while: a quick
	// apply reports its result alone, which is one message and one store
	// write on the fleet instead of two (a push to 19,000 agents).
	var amu sync.Mutex
	applied := false
	applying := time.AfterFunc(applyingAfter, func() {
		amu.Lock()
		defer amu.Unlock()
		if !applied {
			set(protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLYING, "")
		}
	})
	_, err := c.o.Callbacks.OnRemoteConfig(ctx, rc)
	amu.Lock()
	applied = true
	amu.Unlock()
	applying.Stop()
	if err != nil {
		c.log.Warn("remote config failed; keeping the previous one", zap.Error(err))
		set(protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED, err.Error())
		return
	}
	// The effective config, then APPLIED, back to back: opamp-go merges
	// both into its next message, one report instead of two.
	if err := cl.UpdateEffectiveConfig(ctx); err != nil {
		c.log.Debug("report effective config", zap.Error(err))
	}
	set(protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED, "")
}
