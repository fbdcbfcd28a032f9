package profiles_test

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/test/s3"
)

// TestS3Outage stops the object store under a store: writes fail with
// ErrUnavailable naming the bucket and index nothing, queries fail alike;
// once the server is back, writes succeed again and nothing was lost.
func TestS3Outage(t *testing.T) {
	srv := s3.New(t) // its own server: this test stops it
	bucket := srv.Bucket(t)
	bl, err := profiles.NewS3Blobs(t.Context(), profiles.S3Options{
		Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, MaxRetries: 1, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t, t.TempDir(), &profiles.Options{Blobs: bl})
	ctx := t.Context()
	labels := map[string]string{"__name__": "process_cpu", "unit": "x"}
	write := func(i int) error {
		p := mkProfile(t, labels, t0.Add(time.Duration(i)*10*time.Second), [][]string{{"work", "main"}}, []int64{1})
		return s.Write(ctx, "p", []profiles.Profile{p, p})
	}
	if err := write(0); err != nil {
		t.Fatal(err)
	}
	q, _ := profiles.NewQuery(`{unit="x"}`, t0.Add(-time.Hour), t0.Add(time.Hour))

	srv.StopServer()
	start := time.Now()
	err = write(1)
	if !errors.Is(err, profiles.ErrUnavailable) || !strings.Contains(err.Error(), "s3://"+bucket+"/projects/p/") {
		t.Fatalf("write with the object store down: %v; want ErrUnavailable naming the bucket and key", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing write took %v", d)
	}
	if _, err := s.Merge(ctx, "p", q); !errors.Is(err, profiles.ErrUnavailable) {
		t.Errorf("merge with the object store down: %v; want ErrUnavailable", err)
	}
	// The index has only the first write: nothing half-written.
	if series, err := s.Series(ctx, "p", q); err != nil || len(series) != 1 || len(series[0].Points) != 2 {
		t.Fatalf("series while down: %+v, %v; want the 2 points of the first write", series, err)
	}

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := write(2); err != nil {
		t.Fatalf("write after the object store came back: %v", err)
	}
	rows, blobs, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 4 || blobs != 4 {
		t.Errorf("after the outage: %d rows, %d blobs; want 4 and 4", rows, blobs)
	}
	p, err := s.Merge(ctx, "p", q)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, smp := range p.Sample {
		total += smp.Value[0]
	}
	if want := 4 * (int64(time.Second) / 19); total != want {
		t.Errorf("merged total %d, want %d", total, want)
	}
}

// TestS3Misconfigured: NewS3Blobs checks the bucket at once.
func TestS3Misconfigured(t *testing.T) {
	srv := sharedS3(t)
	bucket := srv.Bucket(t)
	ok := profiles.S3Options{Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, MaxRetries: 1}
	cases := []struct {
		name     string
		mod      func(o *profiles.S3Options)
		sentinel error
		contains string
	}{
		{"missing bucket", func(o *profiles.S3Options) { o.Bucket = "no-such-bucket" }, profiles.ErrInvalid, "no-such-bucket"},
		{"wrong secret", func(o *profiles.S3Options) { o.SecretAccessKey = "wrong" }, profiles.ErrUnavailable, bucket},
		{"nothing listening", func(o *profiles.S3Options) { o.Endpoint = "127.0.0.1:1" }, profiles.ErrUnavailable, "127.0.0.1:1"},
		{"scheme in endpoint", func(o *profiles.S3Options) { o.Endpoint = "http://" + o.Endpoint }, profiles.ErrInvalid, "without a scheme"},
		{"no bucket", func(o *profiles.S3Options) { o.Bucket = "" }, profiles.ErrInvalid, "required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := ok
			c.mod(&o)
			_, err := profiles.NewS3Blobs(t.Context(), o)
			if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.contains) {
				t.Errorf("err %v; want %v containing %q", err, c.sentinel, c.contains)
			}
		})
	}
	if _, err := profiles.NewS3Blobs(t.Context(), ok); err != nil {
		t.Errorf("good options: %v", err)
	}
}

// TestS3Blobs checks the object layout under the prefix and the Blobs
// contract: missing keys, bulk delete, listing by prefix.
func TestS3Blobs(t *testing.T) {
	srv := sharedS3(t)
	bucket := srv.Bucket(t)
	bl := s3Blobs(t, bucket) // prefix fleet-a
	ctx := t.Context()
	for _, k := range []string{"projects/a/1.pb.gz", "projects/a/2.pb.gz", "projects/b/3.pb.gz"} {
		if err := bl.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StatObject(ctx, bucket, "fleet-a/projects/b/3.pb.gz", minioStat); err != nil {
		t.Errorf("object not under the prefix: %v", err)
	}
	if _, err := bl.Get(ctx, "projects/x.pb.gz"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("get of a missing key: %v; want fs.ErrNotExist", err)
	}
	var keys []string
	if err := bl.List(ctx, "projects/a/", func(b profiles.BlobInfo) error { keys = append(keys, b.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "projects/a/1.pb.gz,projects/a/2.pb.gz" {
		t.Errorf("list projects/a/: %v", keys)
	}
	if err := bl.Delete(ctx, "projects/a/1.pb.gz", "projects/a/2.pb.gz", "projects/a/missing.pb.gz"); err != nil {
		t.Fatal(err)
	}
	if err := bl.Delete(ctx, "projects/a/missing.pb.gz"); err != nil {
		t.Errorf("delete of a missing key: %v", err)
	}
	var n atomic.Int32
	stop := errors.New("stop")
	err = bl.List(ctx, "", func(b profiles.BlobInfo) error { n.Add(1); return stop })
	if !errors.Is(err, stop) || n.Load() != 1 {
		t.Errorf("list stops at fn's error: %v after %d", err, n.Load())
	}
	if ok, err := bl.Exists(ctx, "projects/b/3.pb.gz"); !ok || err != nil {
		t.Errorf("exists: %v %v", ok, err)
	}
	if ok, err := bl.Exists(ctx, "projects/a/1.pb.gz"); ok || err != nil {
		t.Errorf("exists after delete: %v %v", ok, err)
	}
}

// failingBlobs fails the failAt-th Put. The lateAt-th Put behaves like an
// object store that commits a request whose client has gone: it waits for
// its context to be cancelled, stores the blob all the same and returns
// the cancellation.
type failingBlobs struct {
	profiles.Blobs
	puts, failAt, lateAt atomic.Int32
}

func (f *failingBlobs) Put(ctx context.Context, key string, data []byte) error {
	switch f.puts.Add(1) {
	case f.failAt.Load():
		return errors.New("injected put failure")
	case f.lateAt.Load():
		<-ctx.Done()
		if err := f.Blobs.Put(context.WithoutCancel(ctx), key, data); err != nil {
			return err
		}
		return ctx.Err()
	}
	return f.Blobs.Put(ctx, key, data)
}

// TestWriteFailsWhole: when one blob of a write fails, no row is indexed
// and the blobs already stored are deleted, including one whose Put was
// cancelled by the failure but stored anyway (which CI once caught against
// minio).
func TestWriteFailsWhole(t *testing.T) {
	backends(t, func(t *testing.T, b *backend) {
		inner := b.options(t, nil).Blobs
		if inner == nil {
			d, err := profiles.NewDirBlobs(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			inner = d
		}
		fb := &failingBlobs{Blobs: inner}
		fb.failAt.Store(3)
		fb.lateAt.Store(1)
		s := openStore(t, t.TempDir(), &profiles.Options{Blobs: fb})
		var ps []profiles.Profile
		for i := range 5 {
			ps = append(ps, mkProfile(t, map[string]string{"__name__": "process_cpu"}, t0.Add(time.Duration(i)*time.Second), [][]string{{"f"}}, []int64{1}))
		}
		if err := s.Write(t.Context(), "p", ps); err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("write: %v; want the injected failure", err)
		}
		rows, blobs, err := s.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if rows != 0 || blobs != 0 {
			t.Errorf("after a failed write: %d rows, %d blobs; want none", rows, blobs)
		}
	})
}

var minioStat = minio.StatObjectOptions{}

// TestIndexRefusesOtherBlobs: an index records where its blobs are, and
// opening it with blobs elsewhere fails instead of taking every row for
// dangling.
func TestIndexRefusesOtherBlobs(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	seed(t, s)
	s.Close()
	bucket := sharedS3(t).Bucket(t)
	_, err := profiles.Open(t.Context(), dir, &profiles.Options{Blobs: s3Blobs(t, bucket)})
	if !errors.Is(err, profiles.ErrInvalid) || !strings.Contains(err.Error(), "blobs are at local, not s3://"+bucket+"/fleet-a/") {
		t.Fatalf("open a local index with S3 blobs: %v", err)
	}
	s = openStore(t, dir, nil)
	if rows, _, err := s.Stats(t.Context()); err != nil || rows != 13 {
		t.Errorf("rows after the refused open: %d, %v; want 13", rows, err)
	}
}
