package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/internal/testutil"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// TestBackendOutage: the fleet is down for several windows while a real
// agent keeps sampling; after it comes back every window of the workload
// is stored exactly once, and the agent's memory stayed bounded.
func TestBackendOutage(t *testing.T) {
	testutil.RequireBPF(t)
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "outage")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	wl := exec.Command(buildWorkload(t), "cpu", "120")
	if err := wl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wl.Process.Kill(); _ = wl.Wait() })
	start := time.Now().Add(-time.Minute)
	ag := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", boot, "--profiling-duration", "1s")
	series := func() []profiles.Point {
		q := url.Values{"query": {fmt.Sprintf(`{pid="%d"}`, wl.Process.Pid)}, "from": {start.Format(time.RFC3339)}, "to": {time.Now().Add(time.Minute).Format(time.RFC3339)}}
		var ss []profiles.Series
		if err := f.Client().Do(context.Background(), http.MethodGet, "/api/v1/projects/"+project+"/profiles/series?"+q.Encode(), nil, &ss); err != nil {
			return nil
		}
		var pts []profiles.Point
		for _, s := range ss {
			pts = append(pts, s.Points...)
		}
		sort.Slice(pts, func(i, j int) bool { return pts[i].Time.Before(pts[j].Time) })
		return pts
	}
	fleettest.Eventually(t, 30*time.Second, "first windows stored", func() (bool, string) {
		return len(series()) >= 3, ""
	})
	rssBefore := rssKiB(ag.Pid())
	f.Stop()
	down := time.Now()
	var peak int64
	for time.Since(down) < 8*time.Second {
		if r := rssKiB(ag.Pid()); r > peak {
			peak = r
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.Start()
	up := time.Now()
	t.Logf("fleet down %s; agent RSS %d KiB before, peak %d KiB during", up.Sub(down).Round(time.Millisecond), rssBefore, peak)
	if peak > 150<<10 {
		t.Errorf("agent RSS peaked at %d KiB during the outage", peak)
	}
	// Every window from before the outage to after it is there, once.
	var pts []profiles.Point
	fleettest.Eventually(t, 60*time.Second, "the windows of the outage arrived", func() (bool, string) {
		pts = series()
		if len(pts) == 0 || !pts[len(pts)-1].Time.After(up.Add(2*time.Second)) {
			return false, fmt.Sprintf("%d points", len(pts))
		}
		return true, ""
	})
	seen := map[int64]bool{}
	for i, p := range pts {
		if seen[p.Time.UnixNano()] {
			t.Fatalf("window %s stored twice", p.Time)
		}
		seen[p.Time.UnixNano()] = true
		if i > 0 {
			// Each window starts where the one before ended (a window
			// is longer than 1 s when the agent was starved of CPU at
			// its end, as under a parallel test run): a gap between
			// them is a window lost.
			prev := pts[i-1]
			if gap := p.Time.Sub(prev.Time.Add(prev.Duration)); gap > 500*time.Millisecond {
				t.Fatalf("windows missing between the window of %s (%s long) and that of %s (a gap of %s)", prev.Time, prev.Duration, p.Time, gap)
			}
		}
	}
	outage := 0
	for _, p := range pts {
		if p.Time.After(down) && p.Time.Before(up) {
			outage++
		}
	}
	if outage < 6 {
		t.Fatalf("only %d windows from the %s outage stored", outage, up.Sub(down))
	}
	t.Logf("%d windows stored, %d of them produced during the outage", len(pts), outage)
}
