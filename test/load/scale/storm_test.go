package main

import (
	"testing"
	"time"
)

// TestMedianStorm: the storm rows are the storm with the median recovery
// (of an even count the slower middle one), a storm whose agents were
// not all back counts as the slowest, and every recovery is kept in run
// order.
func TestMedianStorm(t *testing.T) {
	s := func(d time.Duration, cpu float64) storm { return storm{recovery: d, stormCPU: cpu} }
	for _, tc := range []struct {
		name string
		in   []storm
		want storm
	}{
		{"one", []storm{s(3*time.Second, 1)}, s(3*time.Second, 1)},
		{"odd", []storm{s(5*time.Second, 5), s(3*time.Second, 3), s(4*time.Second, 4)}, s(4*time.Second, 4)},
		{"even: the slower middle", []storm{s(5*time.Second, 5), s(3*time.Second, 3), s(4*time.Second, 4), s(6*time.Second, 6)}, s(5*time.Second, 5)},
		{"not all back is the slowest", []storm{s(-1, 0), s(3*time.Second, 3), s(4*time.Second, 4)}, s(4*time.Second, 4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r result
			r.medianStorm(tc.in)
			if r.storm != tc.want {
				t.Errorf("median storm %+v, want %+v", r.storm, tc.want)
			}
			if len(r.storms) != len(tc.in) || r.storms[0] != tc.in[0].recovery {
				t.Errorf("recoveries %v, want those of %+v in run order", r.storms, tc.in)
			}
		})
	}
}
