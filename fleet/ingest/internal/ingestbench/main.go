// Command ingestbench measures ingest throughput against raw disk writes
// and merge latency over an hour and a day; it prints a markdown section.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/fleetprof/fleetprof/fleet/ingest"
	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	profilestorev1alpha1 "github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
)

type auth struct{}

func (auth) AuthorizeWrite(context.Context, string) (string, error) { return "bench", nil }

func main() {
	clients := flag.Int("clients", 32, "concurrent clients")
	total := flag.Int("profiles", 6000, "profiles to ingest")
	flag.Parse()
	if err := run(*clients, *total); err != nil {
		fmt.Fprintln(os.Stderr, "ingestbench:", err)
		os.Exit(1)
	}
}

func run(clients, total int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ingestbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	now := time.Now().Truncate(time.Second)
	// ~10 KiB gzipped profiles, 64 distinct ones.
	var data [][]byte
	for i := range 64 {
		data = append(data, profilestest.Sized(now, 10*time.Second, 10<<10, i))
	}
	size := 0
	for _, d := range data {
		size += len(d)
	}
	avg := size / len(data)

	// 1. Ingest over gRPC (h2c, loopback) into the disk store.
	st, err := profiles.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		return err
	}
	h, err := ingest.New(ingest.Options{Store: st, Auth: auth{}})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	h.Register(mux)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(l)
	defer srv.Close()
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	var next atomic.Int64
	var failed atomic.Int64
	var lat []time.Duration
	var latMu sync.Mutex
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One connection per client, as agents have.
			cl := profilestorev1alpha1connect.NewProfileStoreServiceClient(&http.Client{Transport: &http.Transport{Protocols: p}}, "http://"+l.Addr().String(), connect.WithGRPC())
			for {
				i := next.Add(1) - 1
				if i >= int64(total) {
					return
				}
				req := connect.NewRequest(&profilestorev1alpha1.WriteRawRequest{Series: []*profilestorev1alpha1.RawProfileSeries{{
					Labels: &profilestorev1alpha1.LabelSet{Labels: []*profilestorev1alpha1.Label{
						{Name: "__name__", Value: "process_cpu"}, {Name: "node", Value: fmt.Sprintf("n%d", c)}}},
					Samples: []*profilestorev1alpha1.RawSample{{RawProfile: data[i%int64(len(data))]}},
				}}})
				req.Header().Set("Authorization", "Bearer x")
				t := time.Now()
				if _, err := cl.WriteRaw(ctx, req); err != nil {
					failed.Add(1)
				}
				latMu.Lock()
				lat = append(lat, time.Since(t))
				latMu.Unlock()
			}
		}()
	}
	wg.Wait()
	ingestDur := time.Since(start)
	st.Close()
	if failed.Load() > 0 {
		return fmt.Errorf("%d uploads failed", failed.Load())
	}
	ingestRate := float64(total) / ingestDur.Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })

	// 2. Baseline: the same bytes written raw to disk by as many writers,
	// each file fsynced and renamed (the store's durability without the
	// network, decoding and index).
	raw := filepath.Join(dir, "raw")
	os.MkdirAll(raw, 0o700)
	next.Store(0)
	start = time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(total) {
					return
				}
				f, err := os.CreateTemp(raw, "t")
				if err != nil {
					failed.Add(1)
					return
				}
				f.Write(data[i%int64(len(data))])
				f.Sync()
				f.Close()
				os.Rename(f.Name(), filepath.Join(raw, fmt.Sprintf("%d.pb.gz", i)))
			}
		}()
	}
	wg.Wait()
	rawDur := time.Since(start)
	rawRate := float64(total) / rawDur.Seconds()

	// 3. Merge latency over one series: an hour (360 windows) and a day
	// (8640 windows), the day also after compaction to 5-minute windows.
	qdir := filepath.Join(dir, "query")
	day := now.Add(-24 * time.Hour)
	qs, err := profiles.Open(ctx, qdir, &profiles.Options{Now: func() time.Time { return now.Add(2 * time.Hour) }, CompactAfter: time.Hour})
	if err != nil {
		return err
	}
	defer qs.Close()
	var batch []profiles.Profile
	for i := range 8640 {
		at := day.Add(time.Duration(i) * 10 * time.Second)
		pp := profilestest.CPU(at, 10*time.Second, stacksFor(i), valuesFor(i))
		typ, tot := profiles.Describe(pp, "process_cpu")
		batch = append(batch, profiles.Profile{Labels: map[string]string{"__name__": "process_cpu", "unit": "app.service"}, Type: typ, Time: at, Duration: 10 * time.Second, Total: tot, Data: profilestest.Gzipped(pp)})
		if len(batch) == 240 {
			if err := qs.Write(ctx, "bench", batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	mergeTime := func(from, to time.Time) (time.Duration, int, error) {
		q, err := profiles.NewQuery(`{unit="app.service"}`, from, to)
		if err != nil {
			return 0, 0, err
		}
		var ds []time.Duration
		n := 0
		for range 3 {
			t := time.Now()
			p, err := qs.Merge(ctx, "bench", q)
			if err != nil {
				return 0, 0, err
			}
			ds = append(ds, time.Since(t))
			n = len(p.Sample)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[1], n, nil
	}
	end := day.Add(24 * time.Hour)
	hour, hourSamples, err := mergeTime(end.Add(-time.Hour), end)
	if err != nil {
		return err
	}
	dayLat, _, err := mergeTime(day, end)
	if err != nil {
		return err
	}
	series, _ := profiles.NewQuery(`{unit="app.service"}`, day, end)
	t := time.Now()
	ss, err := qs.Series(ctx, "bench", series)
	if err != nil {
		return err
	}
	seriesLat := time.Since(t)
	t = time.Now()
	if err := qs.Compact(ctx); err != nil {
		return err
	}
	compactDur := time.Since(t)
	rows, _, _ := qs.Stats(ctx)
	dayCompacted, _, err := mergeTime(day, end)
	if err != nil {
		return err
	}

	fmt.Printf(`## Ingest and profile queries

Method: %d concurrent gRPC clients (one HTTP/2 connection each, loopback,
h2c) each send Parca `+"`WriteRaw`"+` requests of one ~%d-byte gzipped CPU
profile into `+"`fleet/ingest`"+` backed by the embedded store
(`+"`fleet/profiles`"+`: blob written to a temp file, fsynced, renamed,
then an SQLite index row). Baseline in the same run: the same %d profiles'
bytes written straight to disk by %d goroutines (temp file, fsync,
rename), no network, decoding or index. Queries: one series of 10 s
windows of a generated CPU profile with ~50 distinct stacks, merged over
an hour (360 windows) and a day (8,640 windows); median of 3.

| measure | value |
|---|---|
| ingest throughput | %.0f profiles/s (%.1f MiB/s) |
| ingest request latency p50 / p99 | %s / %s |
| raw disk write baseline | %.0f profiles/s |
| **ingest / raw disk ratio** | **%.2f** |
| merge, 1 hour (360 windows, %d samples out) | %s |
| merge, 1 day (8,640 windows) | %s |
| series totals (sparkline), 1 day | %s (%d points) |
| compaction of 23 h into 5-minute windows | %s (%d rows left) |
| merge, 1 day after compaction | %s |
| **merge 1 day / merge 1 hour** | **%.1f× (uncompacted), %.1f× (compacted)** |
`, clients, avg, total, clients,
		ingestRate, ingestRate*float64(avg)/(1<<20), r(lat[len(lat)/2]), r(lat[len(lat)*99/100]),
		rawRate, ingestRate/rawRate,
		hourSamples, r(hour), r(dayLat), r(seriesLat), len(ss[0].Points), r(compactDur), rows, r(dayCompacted),
		float64(dayLat)/float64(hour), float64(dayCompacted)/float64(hour))
	return nil
}

func r(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }

func stacksFor(i int) [][]string {
	var out [][]string
	for k := range 50 {
		out = append(out, []string{fmt.Sprintf("pkg.leaf%d", (k+i)%60), fmt.Sprintf("pkg.mid%d", k%10), "pkg.handler", "main.main"})
	}
	return out
}

func valuesFor(i int) []int64 {
	out := make([]int64, 50)
	for k := range out {
		out[k] = int64(1 + (k*7+i)%5)
	}
	return out
}
