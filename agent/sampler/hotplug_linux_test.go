package sampler

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	fptestutil "github.com/fleetprof/fleetprof/internal/testutil"
)

// hotplugCPU returns the highest CPU that can be taken offline (cpu0
// usually cannot). Without one the test fails: it has nothing to show.
func hotplugCPU(t *testing.T) (int, string) {
	t.Helper()
	for cpu := runtime.NumCPU() - 1; cpu > 0; cpu-- {
		path := fmt.Sprintf("/sys/devices/system/cpu/cpu%d/online", cpu)
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
			return cpu, path
		}
	}
	t.Fatal("no CPU can be taken offline here (needs 2 CPUs and /sys/devices/system/cpu/cpuN/online)")
	return 0, ""
}

func setOnline(path string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return os.WriteFile(path, []byte(v), 0o644)
}

// eventsOn reports how many CPUs have a perf event and whether cpu is one.
func (s *Sampler) eventsOn(cpu int) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.events[cpu]
	return len(s.events), ok
}

// TestCPUHotplug takes a CPU offline for real and brings it back while
// the sampler runs: the offline CPU's perf event is closed, sampling goes
// on on the others, and once the CPU is back a thread pinned to it is
// sampled again (only a perf event reopened on that CPU can see it).
func TestCPUHotplug(t *testing.T) {
	fptestutil.RequireBPF(t)
	cpu, path := hotplugCPU(t)
	t.Cleanup(func() {
		if err := setOnline(path, true); err != nil {
			t.Errorf("bring cpu %d back online: %v", cpu, err)
		}
	})
	reg := prometheus.NewRegistry()
	s, err := New(Options{FrequencyHz: 99, Window: 300 * time.Millisecond, HotplugInterval: 50 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	all, has := s.eventsOn(cpu)
	if !has || all != runtime.NumCPU() {
		t.Fatalf("at start: %d perf events, cpu %d has one: %v; want one per CPU", all, cpu, has)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	windows := make(chan *Window, 1024)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func(w *Window) { windows <- w }) }()
	go spin(ctx)

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// drainSince counts the samples of tid (0: of anyone) in the windows
	// handed over from now until want is reached or 5 s pass.
	countSamples := func(tid uint32, want uint64) uint64 {
		var got uint64
		timeout := time.After(5 * time.Second)
		for got < want {
			select {
			case w := <-windows:
				for _, smp := range w.Samples {
					if tid == 0 || smp.TID == tid {
						got += smp.Count
					}
				}
			case <-timeout:
				return got
			}
		}
		return got
	}

	if err := setOnline(path, false); err != nil {
		t.Fatalf("take cpu %d offline: %v", cpu, err)
	}
	waitFor(fmt.Sprintf("the perf event of offline cpu %d to close", cpu), func() bool {
		n, has := s.eventsOn(cpu)
		return !has && n == all-1
	})
	if got := gather(t, reg, "fleetprof_sampler_cpus"); got != float64(all-1) {
		t.Errorf("fleetprof_sampler_cpus = %v with cpu %d offline, want %d", got, cpu, all-1)
	}
	for len(windows) > 0 {
		<-windows
	}
	if got := countSamples(0, 20); got < 20 {
		t.Errorf("%d samples with cpu %d offline, want sampling to go on on the others", got, cpu)
	}

	if err := setOnline(path, true); err != nil {
		t.Fatalf("bring cpu %d online: %v", cpu, err)
	}
	waitFor(fmt.Sprintf("a perf event on cpu %d again", cpu), func() bool {
		n, has := s.eventsOn(cpu)
		return has && n == all
	})
	tids := make(chan uint32, 1)
	pinErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			pinErr <- err
			return
		}
		tids <- uint32(unix.Gettid())
		spin(ctx)
	}()
	var tid uint32
	select {
	case tid = <-tids:
	case err := <-pinErr:
		t.Fatalf("pin a thread to cpu %d: %v", cpu, err)
	}
	for len(windows) > 0 {
		<-windows
	}
	// 99 Hz on a thread that has the CPU: 50 samples take about 0.5 s.
	if got := countSamples(tid, 50); got < 50 {
		t.Errorf("%d samples of a thread pinned to cpu %d after it came back online, want ≥ 50", got, cpu)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
