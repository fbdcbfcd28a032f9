package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/selector"
)

// Errors.
var (
	// ErrInvalid: the request is the caller's fault (bad config, selector
	// or stage parameters); the message names the field.
	ErrInvalid = errors.New("invalid rollout request")
)

// ResetHash is the hash pushed with an empty config body, which tells an
// agent to drop its remote config and run on its local (command-line)
// config. A rollback uses it for agents that had no config before.
var ResetHash = func() string {
	s := sha256.Sum256([]byte("fleetprof-config-reset"))
	return hex.EncodeToString(s[:])
}()

// Pusher sends messages to connected agents (fleet/opamp.Server).
type Pusher interface {
	Send(ctx context.Context, agentID string, msg *protobufs.ServerToAgent) error
	Connected() []string
}

// Options configures a Controller.
type Options struct {
	// Store is required.
	Store store.Store
	// Logger; nil means none.
	Logger *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Tick is how often stages are evaluated; 0 means 500ms.
	Tick time.Duration
	// AgentTimeout is how long an agent of a running stage may stay
	// disconnected, unhealthy or silent before it counts as failed
	// (measured from the stage start, or from this controller's start if
	// later). 0 means 2m.
	AgentTimeout time.Duration
	// PushRetry is how long to wait for an agent to report a pushed
	// config before pushing it again. 0 means 15s.
	PushRetry time.Duration
	// Workers push configs in parallel; 0 means 8.
	Workers int
	// Leader reports whether this replica advances rollouts (holds the
	// leader lease); nil means always. Every replica pushes assigned
	// configs to its own agents either way.
	Leader func() bool
}

// Controller drives rollouts from the store and pushes each agent its
// assigned config. All its methods are goroutine-safe.
type Controller struct {
	o       Options
	st      store.Store
	log     *zap.Logger
	started time.Time

	mu sync.Mutex // serializes rollout writes of this process
	// stages is what the steps of each running rollout's stage work from
	// between two judgements of the stage agent by agent (by mu).
	stages map[string]*stageState
	// listed is the brief records of the targets the last Apply listed
	// (by mu), which the rollout's first stage start takes instead of
	// listing them again when it follows within listedFor.
	listed *listedTargets

	cmu     sync.Mutex
	configs map[string]*store.ConfigVersion // immutable, by id
	sels    map[string]selector.Selector    // by selector text
	// pushes holds the remote config of each version as pushed (by
	// version id, "" the reset): one for all the agents it goes to, not
	// a copy of the body each (31 MB in a push to 19,000 agents). Never
	// changed once built; protobuf messages may be marshalled
	// concurrently.
	pushes map[string]*protobufs.AgentRemoteConfig
	// bodies holds the pushed body (config.JSON) of versions by project
	// and hash, nil for a hash that is no version of the project
	// (ConfigJSON).
	bodies map[[2]string][]byte

	qmu sync.Mutex
	// results holds the results this replica's agents reported for the
	// configs of running stages (watch), until a step writes them.
	results map[string]report
	// watch holds the config hashes of running stages, each with when
	// this replica last heard a report of it (zero: not yet).
	watch   map[string]time.Time
	queue   map[string]queued // agent id → latest record (nil: load), full check
	pushed  map[string]pushRec
	signal  chan struct{}
	kick    chan struct{}
	running chan struct{} // closed once Run has a pusher
	pusher  Pusher
}

type pushRec struct {
	hash string
	at   time.Time
}

// New returns a controller; call Run to start it.
func New(o Options) (*Controller, error) {
	if o.Store == nil {
		return nil, errors.New("rollout: Store is required")
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
		o.AgentTimeout = 2 * time.Minute
	}
	if o.PushRetry <= 0 {
		o.PushRetry = 15 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	return &Controller{
		o: o, st: o.Store, log: o.Logger, started: o.Now(),
		configs: map[string]*store.ConfigVersion{}, sels: map[string]selector.Selector{}, stages: map[string]*stageState{},
		pushes: map[string]*protobufs.AgentRemoteConfig{}, bodies: map[[2]string][]byte{},
		results: map[string]report{}, watch: map[string]time.Time{},
		queue: map[string]queued{}, pushed: map[string]pushRec{},
		signal: make(chan struct{}, 1), kick: make(chan struct{}, 1), running: make(chan struct{}),
	}, nil
}

// Run advances rollouts every Tick and pushes assigned configs through p
// until ctx ends. Rollouts in progress in the store continue where they
// were, so a fleet restart resumes them.
func (c *Controller) Run(ctx context.Context, p Pusher) error {
	c.qmu.Lock()
	c.pusher = p
	c.started = c.o.Now()
	c.qmu.Unlock()
	// Agents connected before now (few: the fleet just started) are
	// checked once; those that connect later report, which queues them.
	connected := p.Connected()
	c.seed(ctx)
	close(c.running)
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range c.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				c.reconcile(ctx, j.id, j.agent, j.full, j.asg)
			}
		}()
	}
	for _, id := range connected {
		c.enqueue(id, nil, true)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.signal:
			}
			for _, j := range c.takeQueue() {
				select {
				case jobs <- j:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	t := time.NewTicker(c.o.Tick)
	defer t.Stop()
	for {
		t0 := time.Now()
		if c.o.Leader == nil || c.o.Leader() {
			c.Step(ctx)
		} else {
			c.mu.Lock()
			c.dropListed(c.o.Now())
			c.mu.Unlock()
		}
		// Reports wake the loop early, but it rests at least Tick/10 and
		// twice as long as the step took, up to 2 Ticks, so a burst of
		// thousands of reports costs a few steps, not thousands. The cap:
		// at 19,000 agents a step that waits for the store's write lock
		// behind the reports' own writes takes seconds of wall time (not
		// of CPU), and resting twice that left a finished stage unseen
		// for 6 s.
		step := time.Since(t0)
		if step > c.o.Tick {
			c.log.Debug("rollout step", zap.Duration("took", step))
		}
		rest := time.NewTimer(max(c.o.Tick/10, min(2*step, 2*c.o.Tick)))
		select {
		case <-ctx.Done():
			rest.Stop()
			wg.Wait()
			return nil
		case <-rest.C:
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
		case <-c.kick:
		}
	}
}

// seed records every agent's assigned config as pushed long ago, from one
// listing per project: after a fleet restart each reconnecting agent
// reports its config, and one that runs its assignment then needs no
// store read (a reconnect storm is one report per agent). One that runs
// another config is read and pushed as before.
func (c *Controller) seed(ctx context.Context) {
	ps, err := c.st.ListProjects(ctx)
	if err != nil {
		c.log.Warn("list projects for the assignment seed", zap.Error(err))
		return
	}
	hashes := map[string]string{} // a few configs for many agents: one string each
	for _, p := range ps {
		asgs, err := c.st.ListAssignments(ctx, p.ID)
		if err != nil {
			c.log.Warn("list assignments for the seed", zap.String("project", p.ID), zap.Error(err))
			return
		}
		c.qmu.Lock()
		for _, a := range asgs {
			h, ok := hashes[a.ConfigHash]
			if !ok {
				h = a.ConfigHash
				hashes[h] = h
			}
			if _, ok := c.pushed[a.AgentID]; !ok {
				c.pushed[a.AgentID] = pushRec{hash: h}
			}
		}
		c.qmu.Unlock()
	}
}

// listedTargets are the brief records of a new rollout's targets, as
// Apply listed them.
type listedTargets struct {
	rollout string
	at      time.Time
	briefs  map[string]*store.Agent
}

// listedFor is how long Apply's listing of the targets stands in for the
// first stage start's. What it may miss is harmless: an agent that
// started running the config meanwhile is pushed it again (and reports
// it), and stage-start pushes do not trust a brief's connected flag
// (reconcile).
const listedFor = 10 * time.Second

// dropListed forgets Apply's listing once it is too old to use (mu held):
// on a replica that does not lead, no stage start takes it.
func (c *Controller) dropListed(now time.Time) {
	if c.listed != nil && now.Sub(c.listed.at) >= listedFor {
		c.listed = nil
	}
}

// stageState is a running stage as its last steps left it.
type stageState struct {
	stage int
	// fullAt: when the stage was last judged agent by agent (read from
	// the store); progressAt: when a step last settled an agent.
	fullAt, progressAt time.Time
	// open are the stage's rows still assigned, by agent.
	open map[string]*store.RolloutAgent
}

// report is an agent's result for a config (settled).
type report struct{ hash, state, msg string }

// Judging a stage agent by agent reads every agent still open from the
// store: at 19,000 agents that was a fifth of the fleet's CPU in a push.
// Between those judgements a step settles the agents whose reports this
// replica saw (OnAgentStatus), from memory. The stage is judged whole at
// its start, when the settled agents could end it, on timeout, every
// fullEvery, and after quietEvery without progress (no agent settled and
// no report of the config heard), so results reported to other replicas
// (or before this replica led) arrive too. Reports heard but not yet
// settled count as progress: under load the fleet stores reports behind
// the agents sending them, and a judgement of 19,000 agents every
// quietEvery then took the CPU the stores needed.
const (
	fullEvery  = 10 * time.Second
	quietEvery = 2 * time.Second
)

// job is a queued check handed to a worker.
type job struct {
	id string
	queued
}

// queued is an agent waiting for a config check. full: its assignment
// may have changed, so the check reads it even when the agent reports the
// config last pushed to it.
// asg, when set, is the assignment just written for it (by this
// controller's stage start), which spares the check a store read.
type queued struct {
	agent *store.Agent
	full  bool
	asg   *store.Assignment
}

// OnAgentStatus is the opamp.Callbacks hook: it queues the agent for a
// check of its config and returns at once. A report of the config this
// controller last pushed to the agent needs no store read: assignment
// changes come with their own check (AssignmentChanged, stage starts).
func (c *Controller) OnAgentStatus(a *store.Agent) {
	if a == nil {
		return
	}
	cp := *a
	c.qmu.Lock()
	if _, ok := c.watch[a.ConfigHash]; ok {
		c.watch[a.ConfigHash] = c.o.Now()
		// Its result, kept for the next step.
		if state, msg, ok := settled(a); ok {
			c.results[a.ID] = report{hash: a.ConfigHash, state: state, msg: msg}
		} else {
			delete(c.results, a.ID)
		}
	}
	c.queueLocked(a.ID, &cp, false, nil)
	c.qmu.Unlock()
	c.signalQueue()
	if a.ConfigStatus == "APPLIED" || a.ConfigStatus == "FAILED" {
		// A stage may be over: evaluate soon rather than at the next tick.
		c.wake()
	}
}

// AssignmentChanged queues the agent for a full check of its config: its
// assignment changed elsewhere (another replica).
func (c *Controller) AssignmentChanged(a *store.Agent) {
	if a == nil {
		return
	}
	cp := *a
	c.enqueue(a.ID, &cp, true)
}

func (c *Controller) enqueue(id string, a *store.Agent, full bool) {
	c.enqueueAssigned(id, a, full, nil)
}

// enqueueAssigned is enqueue with the assignment just written for the
// agent; a later enqueue without one makes the check read it again.
func (c *Controller) enqueueAssigned(id string, a *store.Agent, full bool, asg *store.Assignment) {
	c.qmu.Lock()
	c.queueLocked(id, a, full, asg)
	c.qmu.Unlock()
	c.signalQueue()
}

// queueLocked merges a check into the queue; qmu is held.
func (c *Controller) queueLocked(id string, a *store.Agent, full bool, asg *store.Assignment) {
	q := c.queue[id]
	q.full = q.full || full
	q.asg = asg
	if a != nil {
		q.agent = a
	}
	c.queue[id] = q
}

// takeQueue empties the queue of checks and returns them in the order of
// the agents' ids: a stage's pushes go out so, the agents' reports come
// back in about that order, and the store writes them in runs (agents'
// ids sort in the order they enrolled, the order SQLite keeps their rows
// in; a batch of reports then shares pages).
func (c *Controller) takeQueue() []job {
	c.qmu.Lock()
	batch := c.queue
	c.queue = map[string]queued{}
	c.qmu.Unlock()
	out := make([]job, 0, len(batch))
	for _, id := range slices.Sorted(maps.Keys(batch)) {
		out = append(out, job{id: id, queued: batch[id]})
	}
	return out
}

// signalQueue wakes the dispatcher of queued checks.
func (c *Controller) signalQueue() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

func (c *Controller) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Controller) configVersion(ctx context.Context, id string) (*store.ConfigVersion, error) {
	c.cmu.Lock()
	cv := c.configs[id]
	c.cmu.Unlock()
	if cv != nil {
		return cv, nil
	}
	cv, err := c.st.ConfigVersionByID(ctx, id)
	if err != nil {
		return nil, err
	}
	c.cmu.Lock()
	c.configs[id] = cv
	c.cmu.Unlock()
	return cv, nil
}

func (c *Controller) selector(s string) selector.Selector {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if sel, ok := c.sels[s]; ok {
		return sel
	}
	sel, err := selector.Parse(s)
	if err != nil {
		// Stored selectors were parsed before; an unparsable one selects
		// nothing rather than everything.
		sel, _ = selector.Parse("fleetprof.invalid-selector")
	}
	if len(c.sels) > 10000 {
		clear(c.sels)
	}
	c.sels[s] = sel
	return sel
}

// Message builds the push that carries a config version (nil: the reset
// to the agent's local config). The body is the config's canonical JSON
// (config.JSON): an agent decodes it in a tenth of the time of the YAML,
// and one that only knows YAML reads it as YAML. A stored version that
// does not parse (none should) goes as its YAML, for the agent to refuse.
func Message(cv *store.ConfigVersion) *protobufs.ServerToAgent {
	body, contentType, hash := []byte(nil), config.ContentTypeJSON, ResetHash
	if cv != nil {
		body, contentType, hash = []byte(cv.YAML), config.ContentTypeYAML, cv.Hash
		if c, err := config.Parse(body); err == nil {
			body, contentType = c.JSON(), config.ContentTypeJSON
		}
	}
	h, _ := hex.DecodeString(hash)
	return &protobufs.ServerToAgent{RemoteConfig: &protobufs.AgentRemoteConfig{
		Config:     &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{"": {Body: body, ContentType: contentType}}},
		ConfigHash: h,
	}}
}

// message is Message with the remote config shared by every push of cv.
func (c *Controller) message(cv *store.ConfigVersion) *protobufs.ServerToAgent {
	id := ""
	if cv != nil {
		id = cv.ID
	}
	c.cmu.Lock()
	defer c.cmu.Unlock()
	rc := c.pushes[id]
	if rc == nil {
		if len(c.pushes) > 1000 {
			clear(c.pushes)
		}
		rc = Message(cv).RemoteConfig
		c.pushes[id] = rc
	}
	return &protobufs.ServerToAgent{RemoteConfig: rc}
}

// ConfigJSON returns the body a push of the project's config version of
// this hash carries (its canonical JSON), nil when the project has no
// such version or the store cannot say now. opamp.Options.ConfigJSON:
// an agent's effective config that is exactly this body is recorded by
// reference to the version. Versions are immutable, so answers are kept
// (a store read per version, not per agent).
func (c *Controller) ConfigJSON(projectID, hash string) []byte {
	k := [2]string{projectID, hash}
	c.cmu.Lock()
	body, ok := c.bodies[k]
	c.cmu.Unlock()
	if ok {
		return body
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cv, err := c.st.ConfigVersionByHash(ctx, projectID, hash)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Kept as none: a reset, or a config from elsewhere.
	case err != nil:
		return nil // not kept: the next report asks again
	default:
		f := Message(cv).GetRemoteConfig().GetConfig().GetConfigMap()[""]
		if f.GetContentType() == config.ContentTypeJSON {
			body = f.GetBody()
		}
	}
	c.cmu.Lock()
	if len(c.bodies) > 10000 {
		clear(c.bodies)
	}
	c.bodies[k] = body
	c.cmu.Unlock()
	return body
}

// reconcile pushes an agent its assigned config when it runs another one.
func (c *Controller) reconcile(ctx context.Context, id string, a *store.Agent, full bool, asg *store.Assignment) {
	var err error
	if a == nil {
		if a, err = c.st.AgentByID(ctx, id); err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				c.log.Warn("load agent for config check", zap.String("agent", id), zap.Error(err))
			}
			return
		}
	}
	if !a.Connected && asg == nil {
		// (A stage start's push, which comes with the assignment, is
		// tried whatever its brief record says: the record may be older
		// than the agent's connection. Send fails at once for an agent
		// not connected here.)
		c.qmu.Lock()
		delete(c.pushed, id)
		c.qmu.Unlock()
		return
	}
	if !full && a.ConfigStatus != "" {
		// The agent reports on the very config pushed to it (APPLYING,
		// APPLIED, FAILED): at 19,000 agents a push is 19,000 reports or more.
		c.qmu.Lock()
		rec, ok := c.pushed[id]
		c.qmu.Unlock()
		if ok && rec.hash == a.ConfigHash {
			return
		}
	}
	if asg == nil {
		asg, err = c.st.AssignmentByAgent(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			asg, err = c.assignNewAgent(ctx, a)
		}
		if err != nil {
			c.log.Warn("load assignment", zap.String("agent", id), zap.Error(err))
			return
		}
	}
	if asg == nil || (a.ConfigHash == asg.ConfigHash && a.ConfigStatus != "") {
		return
	}
	now := c.o.Now()
	c.qmu.Lock()
	rec, ok := c.pushed[id]
	if ok && rec.hash == asg.ConfigHash && now.Sub(rec.at) < c.o.PushRetry {
		c.qmu.Unlock()
		return
	}
	c.pushed[id] = pushRec{hash: asg.ConfigHash, at: now}
	p := c.pusher
	c.qmu.Unlock()
	var cv *store.ConfigVersion
	if asg.ConfigID != "" {
		if cv, err = c.configVersion(ctx, asg.ConfigID); err != nil {
			c.log.Warn("load assigned config", zap.String("agent", id), zap.Error(err))
			return
		}
	}
	if err := p.Send(ctx, id, c.message(cv)); err != nil {
		c.log.Debug("push config", zap.String("agent", id), zap.Error(err))
		c.qmu.Lock()
		delete(c.pushed, id)
		c.qmu.Unlock()
		return
	}
	c.log.Debug("pushed config", zap.String("agent", id), zap.String("hash", asg.ConfigHash))
}

// assignNewAgent gives an agent without an assignment the config of the
// completed rollout that wins for its labels (most specific selector,
// then newest), if any.
func (c *Controller) assignNewAgent(ctx context.Context, a *store.Agent) (*store.Assignment, error) {
	best, err := c.resolve(ctx, a, "")
	if err != nil || best == nil {
		return nil, err
	}
	asg := &store.Assignment{AgentID: a.ID, ProjectID: a.ProjectID, ConfigID: best.ConfigID, ConfigHash: best.ConfigHash, RolloutID: best.ID, UpdatedAt: c.o.Now().UTC()}
	if err := c.st.SetAssignments(ctx, []*store.Assignment{asg}); err != nil {
		return nil, err
	}
	c.log.Info("assigned config to new agent", zap.String("agent", a.ID), zap.String("rollout", best.ID), zap.String("selector", best.Selector))
	return asg, nil
}

// resolve returns the completed rollout (other than exclude) that wins
// for a's labels, or nil.
func (c *Controller) resolve(ctx context.Context, a *store.Agent, exclude string) (*store.Rollout, error) {
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{ProjectID: a.ProjectID, Statuses: []string{StatusCompleted}})
	if err != nil {
		return nil, err
	}
	var best *store.Rollout
	for _, r := range rs {
		if r.ID == exclude || !c.selector(r.Selector).Matches(a.Labels) {
			continue
		}
		if best == nil || Wins(r, best) {
			best = r
		}
	}
	return best, nil
}

// ApplyRequest creates a config version and a rollout of it.
type ApplyRequest struct {
	ProjectID string
	// YAML is the config document; it is validated (config.Parse).
	YAML []byte
	// Selector picks the target agents by label; "" means all agents.
	Selector string
	// Canary is the number of agents in the first stage; 0 means none.
	Canary int
	// WavePercent is the share of targets per wave (1..100); WaveCount,
	// when set, is the number of agents per wave instead. Both 0: one wave.
	WavePercent int
	WaveCount   int
	// WavePause is the wait between stages (0..24h).
	WavePause time.Duration
	// MaxFailurePercent (0..100): a stage halts the rollout when its
	// failed share passes it. 0 means any failure halts.
	MaxFailurePercent int
	// Actor is who asked (for CreatedBy).
	Actor string
}

// Apply validates a config, stores it as the project's next version (or
// reuses the version with the same hash) and creates a rollout of it to
// the agents the selector picks. Errors wrap ErrInvalid for bad input,
// store.ErrNotFound for an unknown project.
func (c *Controller) Apply(ctx context.Context, req ApplyRequest) (*store.Rollout, *store.ConfigVersion, error) {
	if _, err := c.st.ProjectByID(ctx, req.ProjectID); err != nil {
		return nil, nil, err
	}
	cfg, err := config.Parse(req.YAML)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: config: %w", ErrInvalid, err)
	}
	sel, err := selector.Parse(req.Selector)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: selector: %w", ErrInvalid, err)
	}
	switch {
	case req.Canary < 0:
		return nil, nil, fmt.Errorf("%w: canary: must not be negative, got %d", ErrInvalid, req.Canary)
	case req.WavePercent < 0 || req.WavePercent > 100:
		return nil, nil, fmt.Errorf("%w: wave: percentage must be between 0 and 100, got %d", ErrInvalid, req.WavePercent)
	case req.WaveCount < 0:
		return nil, nil, fmt.Errorf("%w: wave: count must not be negative, got %d", ErrInvalid, req.WaveCount)
	case req.WavePause < 0 || req.WavePause > 24*time.Hour:
		return nil, nil, fmt.Errorf("%w: wavePause: must be between 0 and 24h, got %s", ErrInvalid, req.WavePause)
	case req.MaxFailurePercent < 0 || req.MaxFailurePercent > 100:
		return nil, nil, fmt.Errorf("%w: maxFailure: percentage must be between 0 and 100, got %d", ErrInvalid, req.MaxFailurePercent)
	}
	body, err := cfg.Marshal()
	if err != nil {
		return nil, nil, err
	}
	now := c.o.Now().UTC()
	cv := &store.ConfigVersion{ID: uuid.NewString(), ProjectID: req.ProjectID, Hash: cfg.HashString(), YAML: string(body), CreatedBy: req.Actor, CreatedAt: now}
	if err := c.st.CreateConfigVersion(ctx, cv); errors.Is(err, store.ErrConflict) {
		if cv, err = c.st.ConfigVersionByHash(ctx, req.ProjectID, cfg.HashString()); err != nil {
			return nil, nil, err
		}
	} else if err != nil {
		return nil, nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	// Rollout ids are UUIDv7: time-ordered and monotonic in this process,
	// so "newest wins" (Wins' last tie-break on id) holds even when two
	// rollouts carry the same timestamp.
	id, err := uuid.NewV7()
	if err != nil {
		return nil, nil, fmt.Errorf("rollout id: %w", err)
	}
	r := &store.Rollout{
		ID: id.String(), ProjectID: req.ProjectID, ConfigID: cv.ID, ConfigHash: cv.Hash, Selector: sel.String(),
		Specificity: sel.Specificity(), Canary: req.Canary, WavePercent: req.WavePercent, WaveCount: req.WaveCount,
		WavePause: req.WavePause, MaxFailurePercent: req.MaxFailurePercent, Stage: -1, Status: StatusPending,
		CreatedBy: req.Actor, CreatedAt: now, UpdatedAt: now,
	}
	targets, briefs, err := c.targets(ctx, r, sel)
	if err != nil {
		return nil, nil, err
	}
	sizes := Plan(len(targets), r.Canary, r.WavePercent, r.WaveCount)
	r.Stages = len(sizes)
	var ras []*store.RolloutAgent
	i := 0
	for stage, n := range sizes {
		for range n {
			ras = append(ras, &store.RolloutAgent{RolloutID: r.ID, AgentID: targets[i], Stage: stage, State: AgentWaiting, UpdatedAt: now})
			i++
		}
	}
	if r.Stages > 0 && (c.o.Leader == nil || c.o.Leader()) {
		// The first stage starts now, in the transaction that creates the
		// rollout: at 19,000 agents a second write of every row, a
		// listing of the rows and a step's wait were a fifth of a push.
		// (A replica that does not drive rollouts leaves it pending for
		// the one that does.)
		ch, push, err := c.stageChange(ctx, r, ras, 0, now, briefs)
		if err != nil {
			return nil, nil, err
		}
		apply(ras, ch.Agents)
		ch.Create, ch.Agents = true, ras
		if err := c.st.ApplyRolloutChange(ctx, ch); err != nil {
			return nil, nil, err
		}
		c.log.Info("rollout created", zap.String("rollout", r.ID), zap.String("selector", r.Selector), zap.Int("config_version", cv.Version),
			zap.Int("agents", len(targets)), zap.Ints("stages", sizes))
		c.stageStarted(r, ras, ch, push, briefs, now)
		c.wake()
		return r, cv, nil
	}
	if err := c.st.CreateRollout(ctx, r, ras); err != nil {
		return nil, nil, err
	}
	c.listed = &listedTargets{rollout: r.ID, at: now, briefs: briefs}
	c.log.Info("rollout created", zap.String("rollout", r.ID), zap.String("selector", r.Selector), zap.Int("config_version", cv.Version),
		zap.Int("agents", len(targets)), zap.Ints("stages", sizes))
	c.wake()
	return r, cv, nil
}

// targets lists the agents r selects and would own: those whose labels
// match and for which no other live rollout wins the conflict rule. The
// order (by id) fixes who is in the canary. It also returns their brief
// records, by id.
func (c *Controller) targets(ctx context.Context, r *store.Rollout, sel selector.Selector) ([]string, map[string]*store.Agent, error) {
	agents, err := c.st.ListAgents(ctx, store.AgentFilter{ProjectID: r.ProjectID, Brief: true, Match: func(a *store.Agent) bool { return sel.Matches(a.Labels) }})
	if err != nil {
		return nil, nil, err
	}
	others, err := c.st.ListRollouts(ctx, store.RolloutFilter{ProjectID: r.ProjectID, Statuses: []string{StatusPending, StatusRunning, StatusPaused, StatusCompleted}})
	if err != nil {
		return nil, nil, err
	}
	var stronger []*store.Rollout
	for _, o := range others {
		if o.ID != r.ID && Wins(o, r) {
			stronger = append(stronger, o)
		}
	}
	var out []string
	briefs := make(map[string]*store.Agent, len(agents))
	for _, a := range agents {
		owned := false
		for _, o := range stronger {
			if c.selector(o.Selector).Matches(a.Labels) {
				owned = true
				break
			}
		}
		if !owned {
			out = append(out, a.ID)
			briefs[a.ID] = a
		}
	}
	sort.Strings(out)
	return out, briefs, nil
}

// Step evaluates every live rollout once: starts stages whose time has
// come, records agent results, halts or completes. Run calls it each
// Tick; tests call it with a fake clock.
func (c *Controller) Step(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropListed(c.o.Now())
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{Statuses: []string{StatusPending, StatusRunning}})
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("list rollouts", zap.Error(err))
		}
		return
	}
	slices.Reverse(rs) // oldest first
	live := make(map[string]bool, len(rs))
	watch := map[string]bool{}
	for _, r := range rs {
		live[r.ID] = true
		if r.Status == StatusRunning {
			watch[r.ConfigHash] = true
		}
	}
	for id := range c.stages {
		if !live[id] {
			delete(c.stages, id)
		}
	}
	c.qmu.Lock()
	for h := range c.watch {
		if !watch[h] {
			delete(c.watch, h)
		}
	}
	for h := range watch {
		if _, ok := c.watch[h]; !ok {
			c.watch[h] = time.Time{}
		}
	}
	for id, rep := range c.results {
		if _, ok := c.watch[rep.hash]; !ok {
			delete(c.results, id)
		}
	}
	c.qmu.Unlock()
	for _, r := range rs {
		if err := c.advance(ctx, r); err != nil && ctx.Err() == nil {
			c.log.Warn("advance rollout", zap.String("rollout", r.ID), zap.Error(err))
		}
	}
}

// advance moves one rollout as far as it can go now.
func (c *Controller) advance(ctx context.Context, r *store.Rollout) error {
	now := c.o.Now().UTC()
	// The rollout's rows are read only when a step needs them: a step
	// that just counts (most of them) does not.
	var ras []*store.RolloutAgent
	loaded := false
	rows := func() ([]*store.RolloutAgent, error) {
		if !loaded {
			var err error
			if ras, err = c.st.ListRolloutAgents(ctx, r.ID); err != nil {
				return nil, err
			}
			loaded = true
		}
		return ras, nil
	}
	for range 2*r.Stages + 2 {
		switch {
		case r.Stages == 0:
			return c.complete(ctx, r, now)
		case r.Stage < 0 || r.NextStageAt != nil:
			k := 0
			if r.Stage >= 0 {
				if now.Before(*r.NextStageAt) {
					return nil
				}
				k = r.Stage + 1
			}
			ras, err := rows()
			if err != nil {
				return err
			}
			if err := c.startStage(ctx, r, ras, k, now); err != nil {
				return err
			}
		default:
			done, fresh, err := c.evaluate(ctx, r, now)
			if fresh != nil {
				ras, loaded = fresh, true
			}
			if err != nil || !done {
				return err
			}
			if r.Status != StatusRunning {
				return nil
			}
		}
	}
	return nil
}

// track records r's current stage as judged whole now from ras.
func (c *Controller) track(r *store.Rollout, ras []*store.RolloutAgent, now time.Time) {
	st := &stageState{stage: r.Stage, fullAt: now, progressAt: now, open: map[string]*store.RolloutAgent{}}
	for _, ra := range ras {
		if ra.Stage == r.Stage && ra.State == AgentAssigned {
			st.open[ra.AgentID] = ra
		}
	}
	c.stages[r.ID] = st
}

// settleReported writes the results this replica's agents reported for
// r's current stage and reports whether the stage may be over (nothing
// open, or more failures than allowed), which a judgement of the whole
// stage then decides.
func (c *Controller) settleReported(ctx context.Context, r *store.Rollout, st *stageState, now time.Time) (bool, error) {
	var upd []*store.RolloutAgent
	reps := map[string]report{}
	failed := false
	// The reports are taken in one short critical section (every
	// report's OnAgentStatus takes the lock), then matched outside it.
	c.qmu.Lock()
	results := c.results
	c.results = make(map[string]report, len(results)/2)
	c.qmu.Unlock()
	for id, rep := range results {
		ra, ok := st.open[id]
		if !ok || rep.hash != r.ConfigHash {
			continue
		}
		u := *ra
		u.State, u.Error, u.UpdatedAt = rep.state, rep.msg, now
		upd = append(upd, &u)
		reps[id] = rep
		failed = failed || rep.state == AgentFailed
		delete(results, id)
	}
	// What this stage did not use goes back, unless a newer report came.
	defer func() {
		c.qmu.Lock()
		for id, rep := range results {
			if _, newer := c.results[id]; !newer {
				c.results[id] = rep
			}
		}
		c.qmu.Unlock()
	}()
	if len(upd) == 0 {
		return len(st.open) == 0, nil
	}
	// In key order: neighbouring rows share pages.
	slices.SortFunc(upd, func(a, b *store.RolloutAgent) int { return strings.Compare(a.AgentID, b.AgentID) })
	if err := c.st.ApplyRolloutChange(ctx, &store.RolloutChange{Agents: upd}); err != nil {
		maps.Copy(results, reps) // to be written by a later step
		return false, err
	}
	for _, u := range upd {
		delete(st.open, u.AgentID)
	}
	st.progressAt = now
	if len(st.open) == 0 {
		return true, nil
	}
	if failed {
		return c.mayBeOver(ctx, r)
	}
	return false, nil
}

// mayBeOver reports whether the counts of r's current stage could end it:
// nothing left open, or more failures than allowed.
func (c *Controller) mayBeOver(ctx context.Context, r *store.Rollout) (bool, error) {
	counts, err := c.st.CountRolloutAgents(ctx, r.ID)
	if err != nil {
		return false, err
	}
	size, failed, open := 0, 0, 0
	for _, n := range counts {
		if n.Stage != r.Stage {
			continue
		}
		size += n.N
		switch n.State {
		case AgentFailed:
			failed += n.N
		case AgentAssigned, AgentWaiting:
			open += n.N
		}
	}
	return open == 0 || (failed > 0 && failed*100 > r.MaxFailurePercent*size), nil
}

// startStage assigns the config to the agents of stage k and pushes it.
func (c *Controller) startStage(ctx context.Context, r *store.Rollout, ras []*store.RolloutAgent, k int, now time.Time) error {
	// The stage's agents as they are now, by their brief records
	// (connected, config state, labels), read in one listing (or taken
	// from Apply's, just made).
	var briefs map[string]*store.Agent
	if l := c.listed; l != nil && l.rollout == r.ID && now.Sub(l.at) < listedFor {
		briefs = l.briefs
	} else {
		var stage []string
		for _, ra := range ras {
			if ra.Stage == k && ra.State == AgentWaiting {
				stage = append(stage, ra.AgentID)
			}
		}
		var err error
		if briefs, err = c.briefs(ctx, r.ProjectID, stage); err != nil {
			return err
		}
	}
	if c.listed != nil && c.listed.rollout == r.ID {
		c.listed = nil
	}
	ch, push, err := c.stageChange(ctx, r, ras, k, now, briefs)
	if err != nil {
		return err
	}
	if err := c.st.ApplyRolloutChange(ctx, ch); err != nil {
		return err
	}
	apply(ras, ch.Agents)
	c.stageStarted(r, ras, ch, push, briefs, now)
	return nil
}

// stageChange is the change that starts stage k of r: the rollout moved
// to it, its waiting agents assigned (or skipped: a stronger rollout owns
// them; or settled: their brief record shows them running the config
// already, so no report will come), with the agents to push.
func (c *Controller) stageChange(ctx context.Context, r *store.Rollout, ras []*store.RolloutAgent, k int, now time.Time, briefs map[string]*store.Agent) (*store.RolloutChange, map[string]bool, error) {
	asgs, err := c.st.ListAssignments(ctx, r.ProjectID)
	if err != nil {
		return nil, nil, err
	}
	current := map[string]*store.Assignment{}
	for _, a := range asgs {
		current[a.AgentID] = a
	}
	owners, err := c.rolloutsByID(ctx, r.ProjectID)
	if err != nil {
		return nil, nil, err
	}
	next := *r
	next.UpdatedAt = now
	next.Status, next.Stage, next.StageStartedAt, next.NextStageAt, next.Reason = StatusRunning, k, ptr(now), nil, ""
	ch := &store.RolloutChange{Rollout: &next}
	push := map[string]bool{}
	for _, ra := range ras {
		if ra.Stage != k || ra.State != AgentWaiting {
			continue
		}
		u := *ra
		u.UpdatedAt = now
		cur := current[ra.AgentID]
		if cur != nil {
			if o := owners[cur.RolloutID]; o != nil && o.ID != r.ID && o.Status != StatusRolledBack && Wins(o, r) {
				u.State, u.Error = AgentSkipped, "assigned by rollout "+o.ID+" (more specific or newer selector "+o.Selector+")"
				ch.Agents = append(ch.Agents, &u)
				continue
			}
			u.PreviousConfigID = cur.ConfigID
		}
		u.State = AgentAssigned
		if b := briefs[ra.AgentID]; b != nil && b.ConfigHash == r.ConfigHash {
			if state, msg, ok := settled(b); ok {
				u.State, u.Error = state, msg
			}
		}
		ch.Agents = append(ch.Agents, &u)
		ch.Assign = append(ch.Assign, &store.Assignment{AgentID: ra.AgentID, ProjectID: r.ProjectID, ConfigID: r.ConfigID, ConfigHash: r.ConfigHash, RolloutID: r.ID, UpdatedAt: now})
		if u.State == AgentAssigned {
			push[ra.AgentID] = true
		}
	}
	return ch, push, nil
}

// stageStarted follows a stored stage start ch: r becomes the stored
// rollout; ras, its rows, already hold the change. The stage is tracked
// and its agents pushed.
func (c *Controller) stageStarted(r *store.Rollout, ras []*store.RolloutAgent, ch *store.RolloutChange, push map[string]bool, briefs map[string]*store.Agent, now time.Time) {
	*r = *ch.Rollout
	c.track(r, ras, now)
	c.log.Info("rollout stage started", zap.String("rollout", r.ID), zap.String("stage", StageName(r, r.Stage)), zap.Int("agents", len(push)))
	c.qmu.Lock()
	if _, ok := c.watch[r.ConfigHash]; !ok {
		c.watch[r.ConfigHash] = time.Time{} // before the pushes: their reports count
	}
	for _, as := range ch.Assign {
		if push[as.AgentID] {
			c.queueLocked(as.AgentID, briefs[as.AgentID], true, as)
		}
	}
	c.qmu.Unlock()
	c.signalQueue()
}

// briefs reads the brief records of a project's agents ids, by id; an
// agent not found is missing from the map.
func (c *Controller) briefs(ctx context.Context, projectID string, ids []string) (map[string]*store.Agent, error) {
	out := make(map[string]*store.Agent, len(ids))
	switch len(ids) {
	case 0:
		return out, nil
	case 1:
		a, err := c.st.AgentByID(ctx, ids[0])
		if errors.Is(err, store.ErrNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out[a.ID] = a
		return out, nil
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	list, err := c.st.ListAgents(ctx, store.AgentFilter{ProjectID: projectID, Brief: true, Match: func(a *store.Agent) bool { return want[a.ID] }})
	if err != nil {
		return nil, err
	}
	for _, a := range list {
		out[a.ID] = a
	}
	return out, nil
}

// apply copies updated rows into ras.
func apply(ras []*store.RolloutAgent, upd []*store.RolloutAgent) {
	by := map[string]*store.RolloutAgent{}
	for _, u := range upd {
		by[u.AgentID] = u
	}
	for i, ra := range ras {
		if u := by[ra.AgentID]; u != nil {
			ras[i] = u
		}
	}
}

func (c *Controller) rolloutsByID(ctx context.Context, projectID string) (map[string]*store.Rollout, error) {
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{ProjectID: projectID})
	if err != nil {
		return nil, err
	}
	m := make(map[string]*store.Rollout, len(rs))
	for _, r := range rs {
		m[r.ID] = r
	}
	return m, nil
}

// StageName is "canary" or "wave N" (1-based).
func StageName(r *store.Rollout, k int) string {
	if r.Canary > 0 {
		if k == 0 {
			return "canary"
		}
		return fmt.Sprintf("wave %d", k)
	}
	return fmt.Sprintf("wave %d", k+1)
}

// evaluate records the results of the current stage's agents; it
// returns true when the stage is over (and the rollout moved on: next
// stage scheduled, completed or halted).
// It also returns the rollout's rows when it read them.
func (c *Controller) evaluate(ctx context.Context, r *store.Rollout, now time.Time) (bool, []*store.RolloutAgent, error) {
	deadline := r.StageStartedAt
	if deadline == nil || deadline.Before(c.started) {
		deadline = ptr(c.started)
	}
	timedOut := now.Sub(*deadline) >= c.o.AgentTimeout
	c.qmu.Lock()
	heard := c.watch[r.ConfigHash]
	c.qmu.Unlock()
	if st := c.stages[r.ID]; st != nil && st.stage == r.Stage && !timedOut && now.Sub(st.fullAt) < fullEvery &&
		(now.Sub(st.progressAt) < quietEvery || now.Sub(heard) < quietEvery || now.Sub(st.fullAt) < quietEvery) {
		over, err := c.settleReported(ctx, r, st, now)
		if err != nil || !over {
			return false, nil, err
		}
	}
	// The agents still assigned in this stage (through the rollout's
	// rows: later steps of a big stage read few agents), then the rows
	// (written only under mu, so the two agree: an assigned row whose
	// agent is not listed is a deleted agent).
	list, err := c.st.ListAgents(ctx, store.AgentFilter{ProjectID: r.ProjectID, Brief: true,
		InRollout: &store.RolloutSlice{RolloutID: r.ID, Stage: r.Stage, State: AgentAssigned}})
	if err != nil {
		return false, nil, err
	}
	agents := make(map[string]*store.Agent, len(list))
	for _, a := range list {
		agents[a.ID] = a
	}
	ras, err := c.st.ListRolloutAgents(ctx, r.ID)
	if err != nil {
		return false, nil, err
	}
	var upd []*store.RolloutAgent
	size, failed, open := 0, 0, 0
	var reasons []string
	for _, ra := range ras {
		if ra.Stage != r.Stage {
			continue
		}
		size++
		if ra.State == AgentAssigned {
			state, msg := c.result(r, agents[ra.AgentID], timedOut)
			if state != AgentAssigned {
				u := *ra
				u.State, u.Error, u.UpdatedAt = state, msg, now
				upd = append(upd, &u)
			}
		}
	}
	apply(ras, upd)
	c.track(r, ras, now)
	for _, ra := range ras {
		if ra.Stage != r.Stage {
			continue
		}
		switch ra.State {
		case AgentFailed:
			failed++
			if len(reasons) < 3 {
				reasons = append(reasons, "agent "+ra.AgentID+": "+ra.Error)
			}
		case AgentAssigned, AgentWaiting:
			open++
		}
	}
	next := *r
	next.UpdatedAt = now
	ch := &store.RolloutChange{Rollout: &next, Agents: upd}
	over := false
	switch {
	case size > 0 && failed > 0 && failed*100 > r.MaxFailurePercent*size:
		next.Status = StatusHalted
		next.Reason = fmt.Sprintf("%s failed: %d of %d agents failed (%d%%, more than the %d%% allowed): %s",
			StageName(r, r.Stage), failed, size, failed*100/size, r.MaxFailurePercent, strings.Join(reasons, "; "))
		over = true
	case open == 0 && r.Stage == r.Stages-1:
		if len(upd) > 0 {
			if err := c.st.ApplyRolloutChange(ctx, &store.RolloutChange{Agents: upd}); err != nil {
				return false, ras, err
			}
		}
		return true, ras, c.complete(ctx, r, now)
	case open == 0:
		next.NextStageAt = ptr(now.Add(r.WavePause))
		over = true
	}
	if !over && len(upd) == 0 {
		return false, ras, nil
	}
	if !over {
		ch.Rollout = nil
	}
	if err := c.st.ApplyRolloutChange(ctx, ch); err != nil {
		return false, ras, err
	}
	if over {
		*r = next
		if r.Status == StatusHalted {
			c.log.Warn("rollout halted", zap.String("rollout", r.ID), zap.String("reason", r.Reason))
			c.auditf(ctx, r, "rollout.halt", r.Reason)
		} else {
			c.log.Info("rollout stage passed", zap.String("rollout", r.ID), zap.String("stage", StageName(r, r.Stage)), zap.Duration("pause", r.WavePause))
		}
	}
	return over, ras, nil
}

// settled is an agent's result in a running stage of the config it
// reports, judged from its record alone: ok is false while it has none
// (applying, or applied but unhealthy and connected).
func settled(a *store.Agent) (state, msg string, ok bool) {
	switch {
	case a.ConfigStatus == "FAILED":
		return AgentFailed, "config failed: " + a.ConfigError, true
	case a.ConfigStatus == "APPLIED" && (a.Healthy || !a.Connected):
		return AgentApplied, "", true
	}
	return "", "", false
}

// result is an agent's state in a running stage.
func (c *Controller) result(r *store.Rollout, a *store.Agent, timedOut bool) (state, msg string) {
	if a == nil {
		return AgentFailed, "agent was deleted"
	}
	if a.ConfigHash == r.ConfigHash {
		if state, msg, ok := settled(a); ok {
			return state, msg
		}
		if a.ConfigStatus == "APPLIED" {
			if timedOut {
				return AgentFailed, "unhealthy after applying: " + a.Health
			}
			return AgentAssigned, ""
		}
	}
	if !timedOut {
		return AgentAssigned, ""
	}
	switch {
	case !a.Connected:
		return AgentFailed, fmt.Sprintf("disconnected for more than %s", c.o.AgentTimeout)
	case !a.Healthy:
		return AgentFailed, "unhealthy: " + a.Health
	}
	return AgentFailed, fmt.Sprintf("did not report the config within %s", c.o.AgentTimeout)
}

// complete marks r completed and gives its config to the agents it now
// wins for but did not reach (hosts that enrolled meanwhile).
func (c *Controller) complete(ctx context.Context, r *store.Rollout, now time.Time) error {
	next := *r
	next.UpdatedAt = now
	next.Status, next.NextStageAt, next.Reason = StatusCompleted, nil, ""
	if next.Stage < 0 {
		next.Stage = max(r.Stages-1, 0)
	}
	sel := c.selector(r.Selector)
	agents, err := c.st.ListAgents(ctx, store.AgentFilter{ProjectID: r.ProjectID, Brief: true, NotInRollout: r.ID, Match: func(a *store.Agent) bool { return sel.Matches(a.Labels) }})
	if err != nil {
		return err
	}
	asgs, err := c.st.ListAssignments(ctx, r.ProjectID)
	if err != nil {
		return err
	}
	current := map[string]*store.Assignment{}
	for _, a := range asgs {
		current[a.AgentID] = a
	}
	owners, err := c.rolloutsByID(ctx, r.ProjectID)
	if err != nil {
		return err
	}
	ch := &store.RolloutChange{Rollout: &next}
	for _, a := range agents {
		if cur := current[a.ID]; cur != nil {
			if o := owners[cur.RolloutID]; o != nil && o.ID != r.ID && o.Status != StatusRolledBack && Wins(o, r) {
				continue
			}
		}
		ch.Assign = append(ch.Assign, &store.Assignment{AgentID: a.ID, ProjectID: r.ProjectID, ConfigID: r.ConfigID, ConfigHash: r.ConfigHash, RolloutID: r.ID, UpdatedAt: now})
	}
	if err := c.st.ApplyRolloutChange(ctx, ch); err != nil {
		return err
	}
	*r = next
	for _, a := range ch.Assign {
		c.enqueue(a.AgentID, nil, true)
	}
	c.log.Info("rollout completed", zap.String("rollout", r.ID), zap.Int("late_agents", len(ch.Assign)))
	c.auditf(ctx, r, "rollout.complete", "")
	return nil
}

func (c *Controller) auditf(ctx context.Context, r *store.Rollout, action, detail string) {
	res := "ok"
	if detail != "" {
		res = detail
	}
	if err := c.st.AppendAudit(ctx, &store.AuditEntry{Time: c.o.Now().UTC(), Actor: "fleet", ProjectID: r.ProjectID, Action: action, Target: r.ID, Result: res}); err != nil {
		c.log.Warn("write audit log", zap.Error(err))
	}
}
