package profiles_test

import (
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/fleet/profiles"
)

// TestSharedIndex runs two stores, as two replicas would, on one
// PostgreSQL index and one bucket: each sees the other's profiles, both
// compacting and cleaning up at once lose and duplicate nothing.
func TestSharedIndex(t *testing.T) {
	dsn, err := sharedPG(t).NewDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bucket := sharedS3(t).Bucket(t)
	now := t0.Add(3 * time.Hour)
	o := func() *profiles.Options {
		return &profiles.Options{IndexDSN: dsn, Blobs: s3Blobs(t, bucket), Now: func() time.Time { return now }}
	}
	a := openStore(t, t.TempDir(), o())
	b := openStore(t, t.TempDir(), o())
	ctx := t.Context()
	var pa, pb []profiles.Profile
	for i := range 30 { // 5 minutes of 10 s windows, 3 h ago: one compacted window each
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		pa = append(pa, mkProfile(t, map[string]string{"__name__": "process_cpu", "node": "a"}, at, [][]string{{"on_a", "main"}}, []int64{1}))
		pb = append(pb, mkProfile(t, map[string]string{"__name__": "process_cpu", "node": "b"}, at, [][]string{{"on_b", "main"}}, []int64{2}))
	}
	var wg sync.WaitGroup
	for _, w := range []struct {
		s  *profiles.DiskStore
		ps []profiles.Profile
	}{{a, pa}, {b, pb}} {
		wg.Go(func() {
			for i := 0; i < len(w.ps); i += 3 {
				if err := w.s.Write(ctx, "p", w.ps[i:i+3]); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	q, _ := profiles.NewQuery(`process_cpu`, t0.Add(-time.Hour), now)
	before, err := a.Top(ctx, "p", q, 0)
	if err != nil {
		t.Fatal(err)
	}
	fromB, err := b.Top(ctx, "p", q, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, fromB); diff != "" {
		t.Errorf("the replicas disagree (-a +b):\n%s", diff)
	}
	if period := int64(time.Second) / 19; before.Total != 30*3*period {
		t.Errorf("total %d, want the profiles of both replicas (%d)", before.Total, 30*3*period)
	}
	// Both maintain at once (retention keeps everything: 15 days).
	for _, s := range []*profiles.DiskStore{a, b} {
		wg.Go(func() {
			if err := s.Maintain(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	after, err := b.Top(ctx, "p", q, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("concurrent compaction changed the merged profile (-before +after):\n%s", diff)
	}
	series, err := a.Series(ctx, "p", q)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 2 || len(series[0].Points) != 1 || len(series[1].Points) != 1 {
		t.Errorf("series after compaction: %+v; want 2 series of one 5-minute window", series)
	}
	// Orphans of a compaction that lost the race go once past the grace.
	later := openStore(t, t.TempDir(), &profiles.Options{IndexDSN: dsn, Blobs: s3Blobs(t, bucket),
		Now: func() time.Time { return time.Now().Add(2 * time.Minute) }})
	if rows, blobs, err := later.Stats(ctx); err != nil || rows != 2 || blobs != 2 {
		t.Errorf("after maintenance: %d rows, %d blobs, %v; want 2 and 2", rows, blobs, err)
	}
}
