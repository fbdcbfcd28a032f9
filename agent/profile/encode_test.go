package profile

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
	pprof "github.com/google/pprof/profile"
)

// TestEncoderMatchesPprof checks the lean encoder against pprof's own:
// both outputs parse to the same profile, for two profiles in a row (the
// encoder's tables are reused).
func TestEncoderMatchesPprof(t *testing.T) {
	mk := func(n int) *pprof.Profile {
		fn := &pprof.Function{ID: 1, Name: "main.work", SystemName: "main.work"}
		kfn := &pprof.Function{ID: 2, Name: "do_syscall_64", SystemName: "do_syscall_64"}
		m := &pprof.Mapping{ID: 1, Start: 0x400000, Limit: 0x500000, Offset: 0x1000, File: "/usr/bin/work", BuildID: "abcd", HasFunctions: true}
		km := &pprof.Mapping{ID: 2, Start: 0xffff800000000000, Limit: 0xffffffffffffffff, File: kernelMappingFile, HasFunctions: true}
		l1 := &pprof.Location{ID: 1, Mapping: m, Address: 0x401234, Line: []pprof.Line{{Function: fn}}}
		l2 := &pprof.Location{ID: 2, Mapping: km, Address: 0xffffffff81000010, Line: []pprof.Line{{Function: kfn}}}
		l3 := &pprof.Location{ID: 3, Address: 0x7f0000001000} // unmapped, unnamed
		return &pprof.Profile{
			SampleType:        []*pprof.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
			DefaultSampleType: "cpu",
			PeriodType:        &pprof.ValueType{Type: "cpu", Unit: "nanoseconds"},
			Period:            52631578,
			TimeNanos:         1700000000000000000 + int64(n),
			DurationNanos:     10e9,
			Mapping:           []*pprof.Mapping{m, km},
			Location:          []*pprof.Location{l1, l2, l3},
			Function:          []*pprof.Function{fn, kfn},
			Sample: []*pprof.Sample{
				{Location: []*pprof.Location{l2, l1}, Value: []int64{int64(n), int64(n) * 52631578}},
				{Location: []*pprof.Location{l3}, Value: []int64{1, 52631578}},
			},
		}
	}
	var e encoder
	for n := 1; n <= 2; n++ {
		p := mk(n)
		var want bytes.Buffer
		if err := p.WriteUncompressed(&want); err != nil {
			t.Fatal(err)
		}
		wp, err := pprof.ParseData(want.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		gp, err := pprof.ParseData(bytes.Clone(e.marshal(p)))
		if err != nil {
			t.Fatalf("parse lean encoding: %v", err)
		}
		if gp.String() != wp.String() {
			t.Errorf("profile %d differs (-pprof +lean):\n%s", n, cmp.Diff(wp.String(), gp.String()))
		}
		if err := gp.CheckValid(); err != nil {
			t.Errorf("profile %d: %v", n, err)
		}
	}
}
