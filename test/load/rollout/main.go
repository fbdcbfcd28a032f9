// Command rollout measures config rollouts at scale: N simulated agents
// in one process, each running the agent's real control code
// (agent/control, opamp-go) and applying pushed configs with
// internal/config, against a real fleet; it prints a markdown section.
//
//	go run ./test/load/rollout -fleet-bin dist/fleetprof -agents 1000
//
// Like test/load it starts its own fleet on loopback. Spread over several
// loopback fleet addresses is not needed below ~19,000 agents.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"

	"github.com/fleetprof/fleetprof/agent/control"
	"github.com/fleetprof/fleetprof/fleet/client"
	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/describe"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "load/rollout:", err)
		os.Exit(1)
	}
}

// agent is one simulated agent's config state.
type agent struct {
	mu  sync.Mutex
	cfg []byte
}

type tracker struct {
	mu      sync.Mutex
	want    []byte // hash being measured
	applied int
	all     chan struct{}
	n       int
	lastAt  time.Time
}

func (t *tracker) reset(hash []byte, n int) chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.want, t.applied, t.n, t.all = hash, 0, n, make(chan struct{})
	return t.all
}

func (t *tracker) applied1(hash []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.all == nil || !bytes.Equal(hash, t.want) {
		return
	}
	t.applied++
	t.lastAt = time.Now()
	if t.applied == t.n {
		close(t.all)
	}
}

func run() error {
	fleetBin := flag.String("fleet-bin", "dist/fleetprof", "fleet binary")
	n := flag.Int("agents", 1000, "simulated agents")
	conc := flag.Int("concurrency", 64, "agents enrolling at once")
	samples := flag.Int("samples", 50, "single-agent pushes for the latency percentiles")
	flag.Parse()

	dir, err := os.MkdirTemp("", "fleetprof-rollout-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	addr := "127.0.0.1:" + strconv.Itoa(20000+(os.Getpid()+7919)%20000)
	url := "http://" + addr
	cmd := exec.Command(*fleetBin, "serve", "--data-dir", filepath.Join(dir, "fleet"), "--http-address", addr, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var admin string
	for range 200 {
		if b, err := os.ReadFile(filepath.Join(dir, "fleet", "admin-token")); err == nil {
			admin = strings.TrimSpace(string(b))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := client.New(url, admin, nil)
	p, err := cl.CreateProject(ctx, "rollout-load")
	if err != nil {
		return err
	}
	boot, err := cl.CreateToken(ctx, p.ID, console.CreateTokenRequest{Name: "load", Scope: "enroll"})
	if err != nil {
		return err
	}

	tr := &tracker{}
	var enrolled atomic.Int64
	sem := make(chan struct{}, *conc)
	for i := range *n {
		sem <- struct{}{}
		ag := &agent{}
		var once sync.Once
		c, err := control.New(control.Options{
			FleetURL: url, BootstrapToken: boot.Token, StateDir: filepath.Join(dir, "agents", strconv.Itoa(i)),
			Description: describe.Agent{Version: "load", Hostname: fmt.Sprintf("host-%d", i), Node: fmt.Sprintf("load-%d", i), Platform: "systemd", OS: "linux"},
			Callbacks: control.Callbacks{
				OnCredential: func(string) {
					once.Do(func() { enrolled.Add(1); <-sem })
				},
				// As the agent: parse by content type, report the
				// canonical JSON (agent/remoteconfig.go).
				OnRemoteConfig: func(_ context.Context, rc *protobufs.AgentRemoteConfig) ([]byte, error) {
					f := rc.GetConfig().GetConfigMap()[""]
					cfg, err := config.ParseAs(f.GetContentType(), f.GetBody())
					if err != nil {
						return nil, err
					}
					b := cfg.JSON()
					ag.mu.Lock()
					ag.cfg = b
					ag.mu.Unlock()
					tr.applied1(rc.ConfigHash)
					return b, nil
				},
				EffectiveConfig:     func() []byte { ag.mu.Lock(); defer ag.mu.Unlock(); return ag.cfg },
				EffectiveConfigType: config.ContentTypeJSON,
			},
		})
		if err != nil {
			return fmt.Errorf("agent %d: %w", i, err)
		}
		go func() { _ = c.Run(ctx) }()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		as, err := cl.ListAgents(ctx, p.ID, "")
		c := 0
		if err == nil {
			for _, a := range as {
				if a.Connected && a.CredentialID != "" && a.PendingCredentialID == "" {
					c++
				}
			}
		}
		if c == *n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d agents connected with their credential after 5 minutes", c, *n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)

	// applyAndWait rolls out a config and returns the time until every
	// selected agent applied it (agent side) and until the fleet marked
	// the rollout completed (fleet side, polled every 20 ms).
	applyAndWait := func(yaml, sel string, want int) (agentSide, fleetSide time.Duration, err error) {
		cfg, err := config.Parse([]byte(yaml))
		if err != nil {
			return 0, 0, err
		}
		all := tr.reset(cfg.Hash(), want)
		t0 := time.Now()
		res, err := cl.ApplyConfig(ctx, p.ID, console.ApplyConfigRequest{YAML: yaml, Selector: sel})
		if err != nil {
			return 0, 0, err
		}
		select {
		case <-all:
			agentSide = time.Since(t0)
		case <-time.After(5 * time.Minute):
			return 0, 0, fmt.Errorf("only %d of %d agents applied %s", tr.applied, want, sel)
		}
		for {
			st, err := cl.Rollout(ctx, res.Rollout.ID)
			if err != nil {
				return 0, 0, err
			}
			if st.Status == "completed" {
				return agentSide, time.Since(t0), nil
			}
			if st.Status != "running" && st.Status != "pending" {
				return 0, 0, fmt.Errorf("rollout %s: %s %s", st.ID, st.Status, st.Reason)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// One agent, many times: push-to-applied latency.
	var one, oneFleet []time.Duration
	for i := range *samples {
		a, f, err := applyAndWait(fmt.Sprintf("sampling: {frequency_hz: %d}\n", 100+i), "node=load-0", 1)
		if err != nil {
			return err
		}
		one, oneFleet = append(one, a), append(oneFleet, f)
	}
	// All agents at once, one wave; then with a 1% canary and 4 waves.
	allAgent, allFleet, err := applyAndWait("sampling: {frequency_hz: 49}\n", "platform=systemd", *n)
	if err != nil {
		return err
	}
	canary := max(*n/100, 1)
	cfg2 := "sampling: {frequency_hz: 61}\n"
	c2, _ := config.Parse([]byte(cfg2))
	all2 := tr.reset(c2.Hash(), *n)
	t0 := time.Now()
	res, err := cl.ApplyConfig(ctx, p.ID, console.ApplyConfigRequest{YAML: cfg2, Selector: "platform=systemd", Canary: canary, WavePercent: 25})
	if err != nil {
		return err
	}
	<-all2
	stagedAgent := time.Since(t0)
	for {
		st, err := cl.Rollout(ctx, res.Rollout.ID)
		if err != nil {
			return err
		}
		if st.Status == "completed" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stagedFleet := time.Since(t0)

	pct := func(ds []time.Duration, q float64) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(q*float64(len(s)-1))].Round(100 * time.Microsecond)
	}
	fmt.Printf("## Config rollout to %d agents\n\n", *n)
	fmt.Printf("Method: `test/load/rollout` starts a fleet (`fleetprof serve`, SQLite) on loopback and %d simulated agents in one process, each running the agent's real `agent/control` (opamp-go WebSocket client) and applying pushed configs with `internal/config` as the agent does (parse by content type, validate, canonical JSON back as effective config). Times start before the `POST …/rollouts` call (what `fleetprof config apply` sends). *Agent side*: until every selected agent ran its apply callback (same process clock). *Fleet side*: until `GET /api/v1/rollouts/{id}` says `completed`, polled every 20 ms — the fleet has then seen APPLIED from every agent and recorded it.\n\n", *n)
	fmt.Println("| measurement | agent side | fleet side (rollout completed) |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| 1 agent, push → applied, p50 / p99 over %d pushes | %s / %s | %s / %s |\n", *samples, pct(one, 0.5), pct(one, 0.99), pct(oneFleet, 0.5), pct(oneFleet, 0.99))
	fmt.Printf("| %d agents, one wave: `config apply` → all APPLIED | %s | %s |\n", *n, allAgent.Round(time.Millisecond), allFleet.Round(time.Millisecond))
	fmt.Printf("| %d agents, canary %d then 25%% waves, no pause | %s | %s |\n", *n, canary, stagedAgent.Round(time.Millisecond), stagedFleet.Round(time.Millisecond))
	base := pct(oneFleet, 0.5)
	fmt.Printf("\nBaseline and ratio (same run): the single-agent rollout (p50 %s, fleet side) is the fixed cost of one rollout (API, store, one 500 ms controller tick at most, push, report). %d agents took %.1f× that, i.e. %.2f ms per agent beyond it.\n",
		base, *n, float64(allFleet)/float64(base), float64(allFleet-base)/float64(time.Millisecond)/float64(*n))
	return nil
}
