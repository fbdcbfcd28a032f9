// Package profilestest builds small, valid CPU pprof profiles for tests of
// upload, ingest and the profile store.
package profilestest

import (
	"bytes"
	"time"

	"github.com/google/pprof/profile"
)

// CPU returns a CPU profile (cpu/nanoseconds, period 1e9/hz) that started
// at start and lasted d, with one sample per stack; stacks list function
// names leaf first, and values[i] is the sample count of stacks[i].
func CPU(start time.Time, d time.Duration, stacks [][]string, values []int64) *profile.Profile {
	const hz = 19
	p := &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType:    &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:        int64(time.Second) / hz,
		TimeNanos:     start.UnixNano(),
		DurationNanos: int64(d),
	}
	m := &profile.Mapping{ID: 1, Start: 0x400000, Limit: 0x800000, File: "/usr/bin/app", HasFunctions: true}
	p.Mapping = []*profile.Mapping{m}
	fns := map[string]*profile.Function{}
	locs := map[string]*profile.Location{}
	for i, st := range stacks {
		s := &profile.Sample{Value: []int64{values[i], values[i] * p.Period}}
		for _, name := range st {
			loc := locs[name]
			if loc == nil {
				fn := &profile.Function{ID: uint64(len(fns) + 1), Name: name, SystemName: name, Filename: "app.go"}
				fns[name] = fn
				p.Function = append(p.Function, fn)
				loc = &profile.Location{ID: uint64(len(locs) + 1), Mapping: m, Address: 0x400000 + addrOf(name),
					Line: []profile.Line{{Function: fn, Line: int64(addrOf(name) % 1000)}}}
				locs[name] = loc
				p.Location = append(p.Location, loc)
			}
			s.Location = append(s.Location, loc)
		}
		p.Sample = append(p.Sample, s)
	}
	return p
}

// Gzipped encodes p as gzipped pprof.
func Gzipped(p *profile.Profile) []byte {
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		panic(err) // a profile built by this package always encodes
	}
	return b.Bytes()
}

// Sized returns a gzipped CPU profile of roughly size bytes: distinct
// stacks of generated function names, seeded by seed.
func Sized(start time.Time, d time.Duration, size int, seed int) []byte {
	n := size / 24
	if n < 1 {
		n = 1
	}
	stacks := make([][]string, n)
	values := make([]int64, n)
	for i := range stacks {
		stacks[i] = []string{fnName(seed, i), fnName(seed, i/4), fnName(0, i%7), "main.main"}
		values[i] = int64(1 + (i+seed)%13)
	}
	return Gzipped(CPU(start, d, stacks, values))
}

// addrOf gives each function name a stable address, as a real binary
// does, so that profiles of different windows merge by location.
func addrOf(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 1099511628211
	}
	return (h % 0x3ffff) * 16
}

func fnName(seed, i int) string {
	const hexd = "0123456789abcdef"
	b := []byte("pkg.fn_")
	for _, v := range []int{seed, i} {
		for k := 0; k < 4; k++ {
			b = append(b, hexd[(v>>(4*k))&15])
		}
	}
	return string(b)
}
