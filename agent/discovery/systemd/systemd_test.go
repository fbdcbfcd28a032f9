package systemd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/agent/discovery"
	"github.com/fleetprof/fleetprof/test/harness"
)

var (
	sd    *harness.Systemd
	sdErr error
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	sd, sdErr = harness.NewSystemd(ctx)
	cancel()
	code := m.Run()
	if sd != nil {
		if err := sd.Close(); err != nil {
			println(err.Error())
		}
	}
	os.Exit(code)
}

// watcher runs a Discoverer and feeds an Index.
type watcher struct {
	ix   *discovery.Index
	up   chan []discovery.Target
	last []discovery.Target
	n    int
}

func units(ts []discovery.Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Labels[discovery.LabelSystemdUnit])
	}
	slices.Sort(out)
	return out
}

// waitFor consumes updates until the units of the latest set are want.
func (w *watcher) waitFor(t *testing.T, within time.Duration, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.After(within)
	for w.n == 0 || !slices.Equal(units(w.last), want) {
		select {
		case ts := <-w.up:
			w.last, w.n = ts, w.n+1
			w.ix.Update(discovery.SourceSystemd, ts)
		case <-deadline:
			t.Fatalf("after %s: units %v, want %v", within, units(w.last), want)
		}
	}
}

func start(t *testing.T, opts Options) (*Discoverer, *watcher) {
	t.Helper()
	opts.Address = sd.Address
	d := New(opts)
	sel, err := discovery.Selector{Units: opts.Units}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{ix: discovery.NewIndex(discovery.IndexOptions{Node: "host-1", Settings: discovery.Settings{Selection: sel}}), up: make(chan []discovery.Target)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, w.up) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d, w
}

func run(t *testing.T, unit string, cmd ...string) int {
	t.Helper()
	if err := sd.RunUnit(t.Context(), unit, cmd...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sd.StopUnit(context.Background(), unit) })
	pid, err := sd.MainPID(t.Context(), unit)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestUnitsFollowed(t *testing.T) {
	harness.Require(t, sdErr)
	web1 := run(t, "fp-web-1.service", "sleep", "1000")
	web2 := run(t, "fp-web-2.service", "sh", "-c", "sleep 1000")
	batch := run(t, "fp-batch.service", "sleep", "1000")

	// A long resync, so that a unit started later is found by the D-Bus
	// signal; then a short one for the second discoverer below.
	_, w := start(t, Options{Units: []string{"fp-web-*.service"}, Resync: time.Hour})
	w.waitFor(t, 10*time.Second, "fp-web-1.service", "fp-web-2.service")
	for _, tg := range w.last {
		if want := sd.Cgroup + "/system.slice/" + tg.Labels[discovery.LabelSystemdUnit]; !slices.Equal(tg.Cgroups, []string{want}) {
			t.Errorf("cgroups of %s = %v, want [%s]", tg.Labels[discovery.LabelSystemdUnit], tg.Cgroups, want)
		}
	}
	for _, tc := range []struct {
		pid  int
		want map[string]string
	}{
		{web1, map[string]string{"node": "host-1", "systemd_unit": "fp-web-1.service"}},
		{web2, map[string]string{"node": "host-1", "systemd_unit": "fp-web-2.service"}},
		{batch, nil},
		{os.Getpid(), nil},
	} {
		l, ok := w.ix.Lookup(uint32(tc.pid))
		if !ok {
			l = nil
		}
		if d := cmp.Diff(tc.want, l); d != "" {
			t.Errorf("Lookup(%d) (-want +got):\n%s", tc.pid, d)
		}
	}

	// Started after discovery began: picked up by the signal, well within a
	// window.
	web3 := run(t, "fp-web-3.service", "sleep", "1000")
	w.waitFor(t, 5*time.Second, "fp-web-1.service", "fp-web-2.service", "fp-web-3.service")
	if l, ok := w.ix.Lookup(uint32(web3)); !ok || l["systemd_unit"] != "fp-web-3.service" {
		t.Errorf("Lookup(new unit's pid %d) = %v, %v", web3, l, ok)
	}
	// Stopped: its target disappears.
	if err := sd.StopUnit(t.Context(), "fp-web-1.service"); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 5*time.Second, "fp-web-2.service", "fp-web-3.service")
	// Restarted: back, with a new pid.
	web1 = run(t, "fp-web-1.service", "sleep", "1000")
	w.waitFor(t, 5*time.Second, "fp-web-1.service", "fp-web-2.service", "fp-web-3.service")
	if l, ok := w.ix.Lookup(uint32(web1)); !ok || l["systemd_unit"] != "fp-web-1.service" {
		t.Errorf("Lookup(restarted unit's pid %d) = %v, %v", web1, l, ok)
	}
}

func TestResyncAndSetUnits(t *testing.T) {
	harness.Require(t, sdErr)
	run(t, "fp-rs-a.service", "sleep", "1000")
	d, w := start(t, Options{Units: []string{"fp-rs-a.service"}, Resync: 300 * time.Millisecond})
	w.waitFor(t, 5*time.Second, "fp-rs-a.service")
	d.SetUnits([]string{"fp-rs-*.service"})
	run(t, "fp-rs-b.service", "sleep", "1000")
	w.waitFor(t, 5*time.Second, "fp-rs-a.service", "fp-rs-b.service")
}

func TestDockerScope(t *testing.T) {
	harness.Require(t, sdErr)
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	unit := "docker-" + hex.EncodeToString(b) + ".scope"
	pid := run(t, unit, "sleep", "1000")
	// The documented flag form: the exact unit name of a Docker container.
	sel, err := discovery.Selector{Units: []string{unit}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	_, w := start(t, Options{Units: sel.Units()})
	w.waitFor(t, 10*time.Second, unit)
	if got, want := w.last[0].Cgroups, []string{sd.Cgroup + "/system.slice/" + unit}; !slices.Equal(got, want) {
		t.Errorf("cgroups = %v, want %v", got, want)
	}
	l, ok := w.ix.Lookup(uint32(pid))
	if !ok || l["systemd_unit"] != unit {
		t.Errorf("Lookup(%d) = %v, %v", pid, l, ok)
	}
	// The scope's cgroup holds the process, in the host's pid namespace.
	fs, err := discovery.DetectCgroupFS("")
	if err != nil {
		t.Fatal(err)
	}
	pids, err := fs.PIDs(w.last[0].Cgroups[0])
	if err != nil || !slices.Contains(pids, pid) {
		t.Errorf("PIDs = %v, %v; want %d among them", pids, err, pid)
	}
}

func TestUnreachableBus(t *testing.T) {
	d := New(Options{Address: "unix:path=" + t.TempDir() + "/none", Units: []string{"x.service"}, Resync: time.Hour})
	up := make(chan []discovery.Target)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, up) }()
	select {
	case ts := <-up:
		if len(ts) != 0 {
			t.Errorf("targets without a bus: %v", ts)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no empty set sent while the bus is unreachable")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil on cancel", err)
	}
}
