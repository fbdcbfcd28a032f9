// Command sampler is the benchmark driver for the agent's data plane: it
// runs sampler, symbolizer and profile builder in-process over the whole
// host for a while and prints one JSON object with its own costs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/fleetprof/fleetprof/agent/profile"
	"github.com/fleetprof/fleetprof/agent/sampler"
)

type result struct {
	Hz             int                `json:"hz"`
	Seconds        float64            `json:"seconds"`
	StartupSeconds float64            `json:"startup_seconds"`
	CPUPercent     float64            `json:"cpu_percent_of_one_core"`
	SteadyRSSMiB   float64            `json:"steady_rss_mib"`
	PeakRSSMiB     float64            `json:"peak_rss_mib"`
	Samples        uint64             `json:"bpf_samples"`
	NsPerSample    float64            `json:"bpf_ns_per_sample"`
	ExecProgRuns   uint64             `json:"bpf_exec_runs"`
	Windows        int                `json:"windows"`
	Profiles       int                `json:"profiles"`
	ProfileBytes   int                `json:"profile_bytes"`
	WindowSamples  uint64             `json:"window_samples"`
	Dropped        uint64             `json:"dropped"`
	LostStacks     uint64             `json:"lost_stacks"`
	FramesResolved map[string]float64 `json:"frames_resolved"`
	LoadAverage    string             `json:"load_average"` // 1, 5, 15 min at the end of the run
	MapsReads      float64            `json:"maps_reads"`
	ObjectLoads    float64            `json:"object_loads"`
}

func main() {
	hz := flag.Int("hz", 19, "sampling frequency")
	window := flag.Duration("window", 10*time.Second, "profiling window")
	dur := flag.Duration("duration", 60*time.Second, "how long to run after start-up")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this program here")
	memProfile := flag.String("memprofile", "", "write an allocation profile of this program here")
	report := flag.Bool("report", false, "print the markdown section from the idle start-up seconds and result JSON files (arguments)")
	gcPercent := flag.Int("gc-percent", 50, "Go GC target, as the agent's --gc-percent default (50)")
	startupOnly := flag.Bool("startup", false, "only start up (builder, kernel symbols, BPF load and attach), print the seconds it took and exit")
	countEntries := flag.Int("count-entries", 0, "count map size (0: the sampler's default)")
	stackEntries := flag.Int("stack-entries", 0, "stack map sizes (0: the sampler's default)")
	flag.Parse()
	if *report {
		if err := printReport(flag.Arg(0), flag.Args()[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench sampler:", err)
			os.Exit(1)
		}
		return
	}
	debug.SetGCPercent(*gcPercent)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if *memProfile != "" {
		runtime.MemProfileRate = 4096
		defer func() {
			if f, err := os.Create(*memProfile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	if *startupOnly {
		*dur = 0
	}
	if err := run(sampler.Options{FrequencyHz: *hz, Window: *window, CountEntries: *countEntries, StackEntries: *stackEntries}, *dur); err != nil {
		fmt.Fprintln(os.Stderr, "bench sampler:", err)
		os.Exit(1) //nolint:gocritic // profiles are best effort

	}
}

func run(opts sampler.Options, dur time.Duration) error {
	hz := opts.FrequencyHz
	started, err := processStart()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	b, err := profile.NewBuilder(profile.BuilderOptions{Node: "bench", Registerer: reg})
	if err != nil {
		return err
	}
	defer b.Close()
	opts.OnNewPID = b.Observe
	s, err := sampler.New(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	res := result{Hz: hz, StartupSeconds: time.Since(started).Seconds()}
	if dur == 0 {
		fmt.Printf("%.3f\n", res.StartupSeconds)
		return nil
	}

	st0, err := s.ProgramStats()
	if err != nil {
		return err
	}
	cpu0 := cpuTime()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	var rss []float64
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if v, err := statusKiB("VmRSS"); err == nil {
					rss = append(rss, v/1024)
				}
			}
		}
	}()

	// Whole host: every process is its own target, as with no selectors.
	target := func(pid uint32) (map[string]string, bool) { return nil, true }
	err = s.Run(ctx, func(w *sampler.Window) {
		res.Windows++
		res.Dropped += w.Dropped
		res.LostStacks += w.LostStacks
		for _, smp := range w.Samples {
			res.WindowSamples += smp.Count
		}
		ps, err := b.Build(w, target)
		if err != nil {
			fmt.Fprintln(os.Stderr, "build:", err)
			return
		}
		res.Profiles += len(ps)
		for _, p := range ps {
			res.ProfileBytes += len(p.Data)
		}
	})
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	res.Seconds = elapsed.Seconds()
	res.CPUPercent = 100 * (cpuTime() - cpu0).Seconds() / elapsed.Seconds()
	st1, err := s.ProgramStats()
	if err != nil {
		return err
	}
	res.Samples = st1.Samples - st0.Samples
	res.ExecProgRuns = st1.Execs - st0.Execs
	if res.Samples > 0 {
		res.NsPerSample = float64((st1.SampleTime-st0.SampleTime)+(st1.ExecTime-st0.ExecTime)) / float64(res.Samples)
	}
	if len(rss) > 0 {
		steady := slices.Clone(rss[len(rss)/2:])
		slices.Sort(steady)
		res.SteadyRSSMiB = steady[len(steady)/2]
	}
	if v, err := statusKiB("VmHWM"); err == nil {
		res.PeakRSSMiB = v / 1024
	}
	res.FramesResolved = framesResolved(reg)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAverage = strings.Join(strings.Fields(string(la))[:3], " ")
	}
	res.MapsReads = counter(reg, "fleetprof_symbolize_maps_reads_total")
	res.ObjectLoads = counter(reg, "fleetprof_symbolize_object_loads_total")
	return json.NewEncoder(os.Stdout).Encode(res)
}

// framesResolved returns the share of distinct frames per profile whose
// function was named, by space (user, kernel), from the builder's metrics.
func framesResolved(reg *prometheus.Registry) map[string]float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return nil
	}
	counts := map[string][2]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "fleetprof_profile_frames_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var space string
			var resolved bool
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "space":
					space = l.GetValue()
				case "resolved":
					resolved = l.GetValue() == "true"
				}
			}
			c := counts[space]
			c[1] += m.GetCounter().GetValue()
			if resolved {
				c[0] += m.GetCounter().GetValue()
			}
			counts[space] = c
		}
	}
	out := map[string]float64{}
	for space, c := range counts {
		if c[1] > 0 {
			out[space] = c[0] / c[1]
		}
	}
	return out
}

// counter returns the value of an unlabelled counter of reg (0 if absent).
func counter(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func statusKiB(field string) (float64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/self/status", field)
}

// processStart returns when this process started, from /proc/self/stat
// (clock ticks since boot) and the boot time.
func processStart() (time.Time, error) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Time{}, err
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ticks, err := strconv.ParseUint(fields[19], 10, 64) // field 22: starttime
	if err != nil {
		return time.Time{}, fmt.Errorf("parse starttime: %w", err)
	}
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Time{}, err
	}
	upSec, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse uptime: %w", err)
	}
	boot := time.Now().Add(-time.Duration(upSec * float64(time.Second)))
	return boot.Add(time.Duration(ticks) * time.Second / 100), nil
}
