package systemd

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/fleetprof/fleetprof/agent/discovery"
	"github.com/fleetprof/fleetprof/agent/discovery/cgroup"
	"github.com/fleetprof/fleetprof/test/harness"
)

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func vmRSS() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// scanProcCgroups is the baseline: read and parse /proc/*/cgroup.
func scanProcCgroups() map[int][]string {
	ents, _ := os.ReadDir("/proc")
	out := map[int][]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil {
			continue
		}
		lines, _ := cgroup.ParseProcCgroup(b)
		for _, l := range lines {
			out[pid] = append(out[pid], l.Path)
		}
	}
	return out
}

// BenchmarkResolve500Units measures listing 500 matching units with their
// ControlGroup over D-Bus, resolving them to pids and cold Index lookups,
// against a plain scan of /proc/*/cgroup. Run with -benchtime=1x.
func BenchmarkResolve500Units(b *testing.B) {
	harness.Require(b, sdErr)
	const n = 500
	ctx := context.Background()
	conn, err := Connect(sd.Address)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	for i := range n {
		name := fmt.Sprintf("fp-bench-%03d.service", i)
		ch := make(chan string, 1)
		if _, err := conn.StartTransientUnitContext(ctx, name, "replace",
			[]sddbus.Property{sddbus.PropExecStart([]string{"/bin/sleep", "1000"}, false)}, ch); err != nil {
			b.Fatal(err)
		}
		<-ch
	}
	b.Cleanup(func() {
		for i := range n {
			_, _ = conn.StopUnitContext(ctx, fmt.Sprintf("fp-bench-%03d.service", i), "replace", nil)
		}
	})
	fs, err := discovery.DetectCgroupFS("")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		heap0, rss0 := heapInuse(), vmRSS()
		d := New(Options{Address: sd.Address, Units: []string{"fp-bench-*.service"}})
		lconn, err := Connect(sd.Address)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		ts, err := d.List(ctx, lconn)
		if err != nil || len(ts) != n {
			b.Fatalf("List: %d targets, %v", len(ts), err)
		}
		list := time.Since(start)
		start = time.Now()
		var pids []int
		for _, tg := range ts {
			p, _ := fs.PIDs(tg.Cgroups[0])
			pids = append(pids, p...)
		}
		resolve := time.Since(start)
		if len(pids) < n {
			b.Fatalf("resolved %d pids, want %d", len(pids), n)
		}
		sel, _ := discovery.Selector{Units: []string{"fp-bench-*.service"}}.Compile()
		ix := discovery.NewIndex(discovery.IndexOptions{Settings: discovery.Settings{Selection: sel}})
		ix.Update(discovery.SourceSystemd, ts)
		start = time.Now()
		for _, pid := range pids {
			if _, ok := ix.Lookup(uint32(pid)); !ok {
				b.Fatalf("pid %d not found", pid)
			}
		}
		lookup := time.Since(start)
		heap1, rss1 := heapInuse(), vmRSS()
		lconn.Close()

		start = time.Now()
		scan := scanProcCgroups()
		baseline := time.Since(start)
		runtime.KeepAlive(ix)

		b.ReportMetric(float64(list.Microseconds())/1000, "list-dbus-ms")
		b.ReportMetric(float64(resolve.Microseconds())/1000, "resolve-pids-ms")
		b.ReportMetric(float64(lookup.Microseconds())/1000, "cold-lookups-ms")
		b.ReportMetric(float64(baseline.Microseconds())/1000, "baseline-scan-ms")
		b.ReportMetric(float64(len(scan)), "baseline-procs")
		b.ReportMetric(float64(int64(heap1)-int64(heap0))/(1<<20), "heap-MiB")
		b.ReportMetric(float64(int64(rss1)-int64(rss0))/(1<<20), "rss-delta-MiB")
		b.ReportMetric(float64(rss1)/(1<<20), "rss-MiB")
	}
}
