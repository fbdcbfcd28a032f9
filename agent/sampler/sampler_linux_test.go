package sampler

import (
	"context"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	fptestutil "github.com/fleetprof/fleetprof/internal/testutil"
)

// spin burns CPU on a locked thread until ctx ends.
func spin(ctx context.Context) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	x := 0
	for ctx.Err() == nil {
		for i := range 100000 {
			x += i
		}
	}
	_ = x
}

// spinNamed is spin on a thread named name (prctl PR_SET_NAME); it sends
// the thread's id once named.
func spinNamed(ctx context.Context, name string, tid chan<- uint32) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := append([]byte(name), 0)
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0)
	tid <- uint32(unix.Gettid())
	spin(ctx)
}

func TestSamplesOwnProcess(t *testing.T) {
	fptestutil.RequireBPF(t)
	reg := prometheus.NewRegistry()
	newPIDs := make(chan uint32, 1024)
	s, err := New(Options{FrequencyHz: 99, Window: time.Second, Registerer: reg, OnNewPID: func(pid uint32) {
		select {
		case newPIDs <- pid:
		default:
		}
	}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	tids := make(chan uint32, 1)
	go spinNamed(ctx, "fp-spin-own", tids)
	spinTID := <-tids
	var windows []*Window
	var cpu []time.Duration
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(w *Window) {
			windows = append(windows, w)
			cpu = append(cpu, cpuTime(t))
			if len(windows) == 2 {
				cancel()
			}
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not hand over two windows in 10s")
	}

	self := uint32(os.Getpid())
	w := windows[1]
	if d := w.End.Sub(w.Start); d < 900*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("window length %s, want about 1s", d)
	}
	if w.FrequencyHz != 99 {
		t.Errorf("FrequencyHz = %d, want 99", w.FrequencyHz)
	}
	var own, withUser, withKernel, named uint64
	for _, smp := range w.Samples {
		if smp.PID != self {
			continue
		}
		own += smp.Count
		if smp.TID == spinTID {
			named += smp.Count
			if smp.Comm != "fp-spin-own" {
				t.Errorf("sample of the spinning thread named %q, want fp-spin-own", smp.Comm)
			}
		}
		if len(smp.User) > 0 {
			withUser += smp.Count
		}
		if len(smp.Kernel) > 0 {
			withKernel += smp.Count
		}
		if smp.Comm == "" {
			t.Errorf("sample without comm: %+v", smp)
		}
	}
	// A spinning thread at 99 Hz: samples follow the CPU time we got.
	want := (cpu[1] - cpu[0]).Seconds() * 99
	if float64(own) < 0.7*want || own < 10 {
		t.Errorf("own samples = %d, want about %.0f (CPU time x 99 Hz)", own, want)
	}
	if named < own/2 {
		t.Errorf("%d of %d own samples from the spinning thread", named, own)
	}
	if withUser < own*9/10 {
		t.Errorf("samples with a user stack = %d of %d", withUser, own)
	}
	if got := gather(t, reg, "fleetprof_sampler_samples_total"); got < float64(own) {
		t.Errorf("samples metric %v < own samples %d", got, own)
	}
	seen := false
	for len(newPIDs) > 0 {
		if <-newPIDs == self {
			seen = true
		}
	}
	if !seen {
		t.Error("OnNewPID never announced this process")
	}
}

func TestSetRateValidation(t *testing.T) {
	fptestutil.RequireBPF(t)
	s, err := New(Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	if hz, w := s.Rate(); hz != 19 || w != 10*time.Second {
		t.Errorf("defaults = %d Hz, %s; want 19 Hz, 10s", hz, w)
	}
	for _, tc := range []struct {
		hz     int
		window time.Duration
		ok     bool
	}{
		{49, time.Second, true},
		{0, time.Second, false},
		{5000, time.Second, false},
		{19, time.Millisecond, false},
	} {
		err := s.SetRate(tc.hz, tc.window)
		if (err == nil) != tc.ok {
			t.Errorf("SetRate(%d, %s) = %v, want ok=%v", tc.hz, tc.window, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidRate) {
			t.Errorf("SetRate(%d, %s) = %v, want ErrInvalidRate", tc.hz, tc.window, err)
		}
	}
	if hz, w := s.Rate(); hz != 49 || w != time.Second {
		t.Errorf("after SetRate = %d Hz, %s; want 49 Hz, 1s", hz, w)
	}
}

// gather returns the value of the unlabelled counter or gauge name.
func gather(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// cpuTime returns this process's user+system CPU time.
func cpuTime(t *testing.T) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSetRateLive changes the frequency while Run runs: the window in
// progress is handed over at the old rate, and the sample count of the
// next window follows the new rate (samples ≈ CPU time × Hz, ±20%).
// Rates are high enough (250 → 1000 Hz, two spinning threads) that the
// counts run to hundreds: at a few dozen samples, counting noise alone
// would be ±20% on a busy machine.
func TestSetRateLive(t *testing.T) {
	fptestutil.RequireBPF(t)
	s, err := New(Options{FrequencyHz: 250, Window: 2 * time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	go spin(ctx)
	go spin(ctx)

	self := uint32(os.Getpid())
	type result struct {
		hz      int
		samples uint64
		cpu     time.Duration
		length  time.Duration
	}
	var results []result
	last := cpuTime(t)
	setErr := make(chan error, 1)
	err = s.Run(ctx, func(w *Window) {
		now := cpuTime(t)
		var n uint64
		for _, smp := range w.Samples {
			if smp.PID == self {
				n += smp.Count
			}
		}
		results = append(results, result{w.FrequencyHz, n, now - last, w.End.Sub(w.Start)})
		last = now
		switch len(results) {
		case 2:
			// SetRate blocks until Run applies it, so not from here.
			go func() { setErr <- s.SetRate(1000, 2*time.Second) }()
		case 4:
			cancel()
		}
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(results) < 4 {
		t.Fatalf("got %d windows in 30s, want 4", len(results))
	}
	if err := <-setErr; err != nil {
		t.Fatalf("SetRate: %v", err)
	}
	for i, r := range results {
		t.Logf("window %d: %d Hz, %s long, %d samples, %s CPU", i, r.hz, r.length, r.samples, r.cpu)
	}
	if results[2].hz != 250 || results[2].length >= 1900*time.Millisecond {
		t.Errorf("window in progress at SetRate: %d Hz, %s long; want 250 Hz, cut short", results[2].hz, results[2].length)
	}
	if results[3].hz != 1000 {
		t.Errorf("window after SetRate: %d Hz, want 1000", results[3].hz)
	}
	// Old rate: the two full windows before the change; new rate: the one after.
	for _, g := range [][]int{{0, 1}, {3}} {
		var samples uint64
		var cpu time.Duration
		hz := results[g[0]].hz
		for _, i := range g {
			samples += results[i].samples
			cpu += results[i].cpu
		}
		want := cpu.Seconds() * float64(hz)
		if got := float64(samples); got < 0.8*want || got > 1.2*want {
			t.Errorf("windows %v at %d Hz: %d samples, want %.0f ± 20%% (CPU %s × Hz)", g, hz, samples, want, cpu)
		}
	}
}

// TestFullMapCountsDrops: a count map too small for the window drops
// samples, and says so in the window and the metric.
func TestFullMapCountsDrops(t *testing.T) {
	fptestutil.RequireBPF(t)
	reg := prometheus.NewRegistry()
	s, err := New(Options{FrequencyHz: 499, Window: time.Second, CountEntries: 2, Registerer: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range 4 {
		go spin(ctx)
	}
	var w *Window
	if err := s.Run(ctx, func(win *Window) { w = win; cancel() }); err != nil {
		t.Fatal(err)
	}
	if len(w.Samples) > 2 {
		t.Errorf("%d keys in a 2-entry map", len(w.Samples))
	}
	if w.Dropped == 0 {
		t.Fatal("no drops reported with a 2-entry count map and 4 busy threads")
	}
	// The metric also counts drops from before Run started.
	if got := gather(t, reg, "fleetprof_sampler_dropped_samples_total"); got < float64(w.Dropped) {
		t.Errorf("dropped metric = %v, window says %d", got, w.Dropped)
	}
}

// TestFullStackMapCountsLost: a user stack map too small for the window
// loses stacks, and says so in the window and the metric; the samples
// stay, without that stack.
func TestFullStackMapCountsLost(t *testing.T) {
	fptestutil.RequireBPF(t)
	reg := prometheus.NewRegistry()
	s, err := New(Options{FrequencyHz: 499, Window: time.Second, StackEntries: 1, Registerer: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range 2 {
		go spin(ctx)
	}
	var w *Window
	if err := s.Run(ctx, func(win *Window) { w = win; cancel() }); err != nil {
		t.Fatal(err)
	}
	self := uint32(os.Getpid())
	stacks := map[*uint64]bool{}
	var own, without uint64
	for _, smp := range w.Samples {
		if len(smp.User) > 0 {
			stacks[&smp.User[0]] = true
		}
		if smp.PID == self {
			own += smp.Count
			if len(smp.User) == 0 {
				without += smp.Count
			}
		}
	}
	t.Logf("%d own samples, %d without a user stack; %d distinct user stacks; %d lost", own, without, len(stacks), w.LostStacks)
	if len(stacks) > 1 {
		t.Errorf("%d distinct user stacks from a 1-entry map", len(stacks))
	}
	if w.LostStacks == 0 || without == 0 {
		t.Fatalf("LostStacks = %d, own samples without a user stack = %d; want both > 0 with a 1-entry stack map and spinning threads", w.LostStacks, without)
	}
	if got := gather(t, reg, "fleetprof_sampler_lost_stacks_total"); got < float64(w.LostStacks) {
		t.Errorf("lost stacks metric = %v, window says %d", got, w.LostStacks)
	}
}
