package profile

import (
	"os"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pprof "github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/agent/sampler"
)

//go:noinline
func markerFunction() int { return 42 }

func TestBuildSynthetic(t *testing.T) {
	b, err := NewBuilder(BuilderOptions{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	self := uint32(os.Getpid())
	pc := uint64(reflect.ValueOf(markerFunction).Pointer())
	const gone = 4_000_001 // beyond pid_max: never a live process
	start := time.Unix(1700000000, 0)
	stack := []uint64{pc + 1, pc + 2}
	w := &sampler.Window{
		Start: start, End: start.Add(10 * time.Second), FrequencyHz: 19,
		Samples: []sampler.Sample{
			{PID: self, TID: self, Comm: "main", User: stack, Count: 3},
			{PID: self, TID: self + 1, Comm: "worker", User: stack, Count: 2},
			{PID: gone, TID: gone, Comm: "ghost", User: []uint64{0x401000}, Kernel: []uint64{0xffffffff81000000}, Count: 5},
			{PID: 1, TID: 1, Comm: "init", User: []uint64{0x1}, Count: 7},
		},
	}
	target := func(pid uint32) (map[string]string, bool) {
		if pid == 1 {
			return nil, false
		}
		return map[string]string{"team": "a"}, true
	}
	ps, err := b.Build(w, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("got %d profiles, want 2 (pid 1 not selected)", len(ps))
	}
	byPID := map[string]Profile{}
	for _, p := range ps {
		byPID[p.Labels["pid"]] = p
	}
	ghost := byPID[strconv.Itoa(gone)]
	if diff := cmp.Diff(map[string]string{"team": "a", "node": "n1", "pid": strconv.Itoa(gone), "comm": "ghost"}, ghost.Labels); diff != "" {
		t.Errorf("labels of an unknown process (-want +got):\n%s", diff)
	}
	mine := byPID[strconv.Itoa(int(self))]
	if mine.Labels["exe"] == "" || mine.Labels["comm"] == "" || mine.Labels["team"] != "a" {
		t.Errorf("labels of this process: %v", mine.Labels)
	}
	if mine.Samples != 5 || ghost.Samples != 5 || mine.Duration != 10*time.Second || !mine.Start.Equal(start) {
		t.Errorf("samples %d/%d, duration %s, start %s", mine.Samples, ghost.Samples, mine.Duration, mine.Start)
	}

	p, err := pprof.ParseData(mine.Data)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if p.Period != int64(time.Second)/19 || p.DurationNanos != int64(10*time.Second) || p.TimeNanos != start.UnixNano() {
		t.Errorf("period %d, duration %d, time %d", p.Period, p.DurationNanos, p.TimeNanos)
	}
	leaf := p.Sample[0].Location[0]
	if len(leaf.Line) == 0 || leaf.Line[0].Function.Name != "github.com/fleetprof/fleetprof/agent/profile.markerFunction" {
		t.Errorf("leaf %+v, want markerFunction", leaf)
	}
	if leaf.Mapping == nil || leaf.Mapping.BuildID == "" {
		t.Errorf("leaf mapping %+v, want the test binary with a build id", leaf.Mapping)
	}
	// Two samples share one stack: locations are deduplicated.
	if len(p.Location) != 2 || len(p.Sample) != 2 {
		t.Errorf("%d locations, %d samples; want 2 and 2", len(p.Location), len(p.Sample))
	}
	for i, l := range p.Location {
		if l.ID != uint64(i+1) {
			t.Errorf("location %d has id %d", i, l.ID)
		}
	}

	g, err := pprof.ParseData(ghost.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Sample) != 1 || len(g.Sample[0].Location) != 2 || g.Sample[0].Location[0].Mapping.File != kernelMappingFile {
		t.Errorf("ghost sample: %v", g.Sample)
	}

	if _, err := b.Build(&sampler.Window{FrequencyHz: 0}, target); err == nil {
		t.Error("window without frequency accepted")
	}
}
