package profile

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pprof "github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/agent/sampler"
	"github.com/fleetprof/fleetprof/agent/symbolize"
)

// TestEncoderMatchesPprof checks the lean encoder against pprof's own:
// a group and the pprof.Profile with the same content parse to the same
// profile, for two groups in a row (the encoder's tables are reused).
func TestEncoderMatchesPprof(t *testing.T) {
	const period = 52631578
	start := time.Unix(1700000000, 0)
	var e encoder
	for n := int64(1); n <= 2; n++ {
		w := &sampler.Window{Start: start.Add(time.Duration(n)), End: start.Add(10 * time.Second), FrequencyHz: 19}
		g := newGroup(map[string]string{"pid": "1"}, w, period)
		sm := &symbolize.Mapping{Start: 0x400000, Limit: 0x500000, Offset: 0x1000, Path: "/usr/bin/work", BuildID: "abcd"}
		kl := g.location(locKey{kern: true, addr: 0xffffffff81000010}, g.kernel(), "do_syscall_64")
		ul := g.location(locKey{m: sm, addr: 0x401234}, g.mapping(sm), "main.work")
		nl := g.location(locKey{addr: 0x7f0000001000}, 0, "") // unmapped, unnamed
		if g.mapping(sm) != 2 || g.kernel() != 1 {
			t.Fatalf("mapping ids not stable: %d, %d", g.mapping(sm), g.kernel())
		}
		g.stacks = append(g.stacks, uint64(kl), uint64(ul))
		g.samples = append(g.samples, sampleRec{end: len(g.stacks), count: n})
		g.stacks = append(g.stacks, uint64(nl))
		g.samples = append(g.samples, sampleRec{end: len(g.stacks), count: 1})
		g.samples = append(g.samples, sampleRec{end: len(g.stacks), count: 3}) // no frames

		kfn := &pprof.Function{ID: 1, Name: "do_syscall_64", SystemName: "do_syscall_64"}
		fn := &pprof.Function{ID: 2, Name: "main.work", SystemName: "main.work"}
		km := &pprof.Mapping{ID: 1, Start: 0xffff800000000000, Limit: 0xffffffffffffffff, File: kernelMappingFile, HasFunctions: true}
		m := &pprof.Mapping{ID: 2, Start: 0x400000, Limit: 0x500000, Offset: 0x1000, File: "/usr/bin/work", BuildID: "abcd", HasFunctions: true}
		l1 := &pprof.Location{ID: 1, Mapping: km, Address: 0xffffffff81000010, Line: []pprof.Line{{Function: kfn}}}
		l2 := &pprof.Location{ID: 2, Mapping: m, Address: 0x401234, Line: []pprof.Line{{Function: fn}}}
		l3 := &pprof.Location{ID: 3, Address: 0x7f0000001000}
		p := &pprof.Profile{
			SampleType:        []*pprof.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
			DefaultSampleType: "cpu",
			PeriodType:        &pprof.ValueType{Type: "cpu", Unit: "nanoseconds"},
			Period:            period,
			TimeNanos:         w.Start.UnixNano(),
			DurationNanos:     w.End.Sub(w.Start).Nanoseconds(),
			Mapping:           []*pprof.Mapping{km, m},
			Location:          []*pprof.Location{l1, l2, l3},
			Function:          []*pprof.Function{kfn, fn},
			Sample: []*pprof.Sample{
				{Location: []*pprof.Location{l1, l2}, Value: []int64{n, n * period}},
				{Location: []*pprof.Location{l3}, Value: []int64{1, period}},
				{Value: []int64{3, 3 * period}},
			},
		}
		var want bytes.Buffer
		if err := p.WriteUncompressed(&want); err != nil {
			t.Fatal(err)
		}
		wp, err := pprof.ParseData(want.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		gp, err := pprof.ParseData(bytes.Clone(e.marshal(g)))
		if err != nil {
			t.Fatalf("parse lean encoding: %v", err)
		}
		if err := gp.CheckValid(); err != nil {
			t.Errorf("group %d: %v", n, err)
		}
		if d := cmp.Diff(wp.String(), gp.String()); d != "" {
			t.Errorf("group %d differs (-pprof +lean):\n%s", n, d)
		}
	}
}
