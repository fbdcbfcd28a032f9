// Command s3bench measures the profile store's ingest rate and merge time
// with blobs in a local directory and in a bucket of a real S3 server
// (versitygw on loopback), in the same run, and prints one markdown
// section for BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/test/s3"
)

func main() {
	n := flag.Int("profiles", 3000, "profiles written per backend")
	clients := flag.Int("clients", 16, "concurrent writers")
	size := flag.Int("size", 16<<10, "approximate gzipped profile size, bytes")
	flag.Parse()
	if err := run(*n, *clients, *size); err != nil {
		fmt.Fprintln(os.Stderr, "s3bench:", err)
		os.Exit(1)
	}
}

type result struct {
	rate          float64 // profiles/s
	p50, p99      time.Duration
	mergeN        int
	merge         time.Duration
	bytesPerWrite int
}

func run(n, clients, size int) error {
	ctx := context.Background()
	srv, err := s3.Start(ctx)
	if err != nil {
		return err
	}
	defer srv.Close()
	bucket, err := srv.NewBucket(ctx)
	if err != nil {
		return err
	}
	// A pool of distinct profiles, reused round robin.
	t0 := time.Now().Add(-time.Hour).Truncate(time.Hour)
	pool := make([]profiles.Profile, 64)
	for i := range pool {
		data := profilestest.Sized(t0, 10*time.Second, size, i)
		pool[i] = profiles.Profile{Labels: map[string]string{"__name__": "process_cpu", "node": fmt.Sprint("n", i%8)},
			Type:  profiles.ProfileType{Name: "process_cpu", SampleType: "cpu", SampleUnit: "nanoseconds", PeriodType: "cpu", PeriodUnit: "nanoseconds"},
			Total: 1, Duration: 10 * time.Second, Data: data}
	}
	measure := func(blobs profiles.Blobs) (result, error) {
		dir, err := os.MkdirTemp("", "s3bench-")
		if err != nil {
			return result{}, err
		}
		defer os.RemoveAll(dir)
		st, err := profiles.Open(ctx, dir, &profiles.Options{Blobs: blobs, CompactAfter: -1})
		if err != nil {
			return result{}, err
		}
		defer st.Close()
		var next atomic.Int64
		lat := make([]time.Duration, n)
		var wg sync.WaitGroup
		var firstErr atomic.Value
		start := time.Now()
		for range clients {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					p := pool[i%len(pool)]
					p.Time = t0.Add(time.Duration(i) * time.Second / 10) // 6 minutes of windows
					t := time.Now()
					if err := st.Write(ctx, "bench", []profiles.Profile{p}); err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					lat[i] = time.Since(t)
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		if e, ok := firstErr.Load().(error); ok {
			return result{}, e
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		r := result{rate: float64(n) / el.Seconds(), p50: lat[n/2], p99: lat[n*99/100], bytesPerWrite: len(pool[0].Data)}
		// Merge one node's profiles of the first minute: a typical console query.
		q, err := profiles.NewQuery(`{node="n0"}`, t0, t0.Add(time.Minute))
		if err != nil {
			return result{}, err
		}
		series, err := st.Series(ctx, "bench", q)
		if err != nil {
			return result{}, err
		}
		for _, s := range series {
			r.mergeN += len(s.Points)
		}
		t := time.Now()
		if _, err := st.Merge(ctx, "bench", q); err != nil {
			return result{}, err
		}
		r.merge = time.Since(t)
		return r, nil
	}
	disk, err := measure(nil)
	if err != nil {
		return fmt.Errorf("local directory: %w", err)
	}
	bl, err := profiles.NewS3Blobs(ctx, profiles.S3Options{Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	if err != nil {
		return err
	}
	obj, err := measure(bl)
	if err != nil {
		return fmt.Errorf("s3: %w", err)
	}
	fmt.Println("## Profile store: local directory vs S3 object storage")
	fmt.Println()
	fmt.Printf("Method: `test/s3/s3bench`: %d profiles of %d KiB (gzipped pprof) written one per `Write` by %d concurrent writers into the profile store (SQLite index), "+
		"once with blobs in a local directory (fsync + rename) and once in a bucket of versitygw v1.8.0 (a real S3 server, POSIX backend on the same disk) over loopback HTTP "+
		"with minio-go (versitygw at its defaults); then one merge of %d windows. Same machine, same run; the S3 server shares the 2 cores with the store.\n\n",
		n, disk.bytesPerWrite>>10, clients, disk.mergeN)
	fmt.Println("| blobs | ingest (profiles/s) | write p50 | write p99 | merge of one node's minute |")
	fmt.Println("|---|---:|---:|---:|---:|")
	row := func(name string, r result) {
		fmt.Printf("| %s | %.0f | %s | %s | %s (%d profiles) |\n", name, r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.merge.Round(time.Millisecond), r.mergeN)
	}
	row("local directory", disk)
	row("S3 (versitygw, loopback)", obj)
	fmt.Println()
	fmt.Printf("Ratio: S3 ingests at **%.2f×** the local directory's rate; a merge takes %.2f× as long.\n",
		obj.rate/disk.rate, obj.merge.Seconds()/disk.merge.Seconds())
	return nil
}
