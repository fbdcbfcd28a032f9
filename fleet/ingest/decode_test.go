package ingest_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/ingest"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
)

// FuzzIngestDecode feeds arbitrary bodies to the ingest decoder: it must
// never panic, must classify every failure as ErrInvalid or ErrTooLarge,
// and what it accepts must round-trip.
func FuzzIngestDecode(f *testing.F) {
	good := profilestest.Gzipped(profilestest.CPU(time.Unix(1, 0), time.Second, [][]string{{"a", "b"}}, []int64{1}))
	var plain bytes.Buffer
	profilestest.CPU(time.Unix(1, 0), time.Second, [][]string{{"c"}}, []int64{2}).WriteUncompressed(&plain)
	f.Add(good)
	f.Add(plain.Bytes())
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x1f, 0x8b})
	f.Add([]byte("garbage"))
	lim := ingest.Limits{MaxProfileBytes: 1 << 20, MaxSamples: 1000}
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, gz, err := ingest.Decode(raw, lim)
		if err != nil {
			if !errors.Is(err, ingest.ErrInvalid) && !errors.Is(err, ingest.ErrTooLarge) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if p == nil || len(gz) < 2 || gz[0] != 0x1f || gz[1] != 0x8b {
			t.Fatalf("accepted without a gzipped profile")
		}
		if len(p.Sample) > lim.MaxSamples {
			t.Fatalf("%d samples accepted", len(p.Sample))
		}
	})
}
