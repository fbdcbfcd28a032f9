package kubernetes

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/agent/discovery"
	"github.com/fleetprof/fleetprof/agent/discovery/cgroup"
	"github.com/fleetprof/fleetprof/test/harness"
)

// heapInuse returns the live heap after a GC, in bytes.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// vmRSS returns this process's resident set, in bytes.
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

// ScanProcCgroups is the baseline: read and parse /proc/*/cgroup of every
// process, keeping each pid's cgroup paths.
func ScanProcCgroups() (map[int][]string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
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
	return out, nil
}

// BenchmarkResolve500Pods measures discovery of 500 pods on the node (list +
// cgroup search), their resolution to pids, and cold Index lookups, against
// a plain scan of /proc/*/cgroup. Run with -benchtime=1x.
func BenchmarkResolve500Pods(b *testing.B) {
	harness.Require(b, kubeErr)
	const n = 500
	root, err := harness.CgroupV2Root()
	harness.Require(b, err)
	c := kube.Clientset
	ns := fmt.Sprintf("bench-%d", time.Now().UnixNano()%100000)
	ctx := context.Background()
	if err := kube.Namespace(ctx, ns); err != nil {
		b.Fatal(err)
	}
	base := "/fleetprof-bench-" + ns
	var pids []int
	for i := range n {
		id := fmt.Sprintf("%064x", i+1)
		p := createPod(b, ns, fmt.Sprintf("p-%03d", i), "node-a", map[string]string{"app": "bench"}, "containerd://"+id)
		pids = append(pids, harness.StartInCgroup(b, base, harness.ContainerdCgroup(string(p.UID), id), "sleep", "1000"))
	}
	fs := &discovery.CgroupFS{Root: root, Version: 2}

	for b.Loop() {
		heap0, rss0 := heapInuse(), vmRSS()
		start := time.Now()
		d, err := New(Options{Client: c, Node: "node-a", Cgroups: fs, Resync: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		up := make(chan []discovery.Target, 1)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- d.Run(rctx, up) }()
		var ts []discovery.Target
		for len(ts) < n {
			ts = <-up
		}
		discover := time.Since(start)
		start = time.Now()
		found := 0
		for _, tg := range ts {
			for _, cg := range tg.Cgroups {
				p, _ := fs.PIDs(cg)
				found += len(p)
			}
		}
		resolve := time.Since(start)
		if found < n {
			b.Fatalf("resolved %d pids, want %d", found, n)
		}
		ix := discovery.NewIndex(discovery.IndexOptions{Node: "node-a"})
		sel, _ := discovery.Selector{Namespaces: []string{ns}}.Compile()
		ix.Apply(discovery.Settings{Selection: sel})
		ix.Update(discovery.SourceKubernetes, ts)
		start = time.Now()
		for _, pid := range pids {
			if _, ok := ix.Lookup(uint32(pid)); !ok {
				b.Fatalf("pid %d not found", pid)
			}
		}
		lookup := time.Since(start)
		start = time.Now()
		for _, pid := range pids {
			ix.Lookup(uint32(pid))
		}
		warm := time.Since(start)
		heap1, rss1 := heapInuse(), vmRSS()
		cancel()
		<-done

		heapB0 := heapInuse()
		start = time.Now()
		scan, err := ScanProcCgroups()
		if err != nil {
			b.Fatal(err)
		}
		baseline := time.Since(start)
		heapB1 := heapInuse()
		runtime.KeepAlive(scan)
		runtime.KeepAlive(ix)

		b.ReportMetric(float64(discover.Microseconds())/1000, "discover-ms")
		b.ReportMetric(float64(resolve.Microseconds())/1000, "resolve-pids-ms")
		b.ReportMetric(float64(lookup.Microseconds())/1000, "cold-lookups-ms")
		b.ReportMetric(float64(warm.Nanoseconds())/float64(n), "warm-lookup-ns")
		b.ReportMetric(float64(baseline.Microseconds())/1000, "baseline-scan-ms")
		b.ReportMetric(float64(len(scan)), "baseline-procs")
		b.ReportMetric(float64(int64(heap1)-int64(heap0))/(1<<20), "heap-MiB")
		b.ReportMetric(float64(int64(rss1)-int64(rss0))/(1<<20), "rss-delta-MiB")
		b.ReportMetric(float64(rss1)/(1<<20), "rss-MiB")
		b.ReportMetric(float64(int64(heapB1)-int64(heapB0))/(1<<20), "baseline-heap-MiB")
	}
}
