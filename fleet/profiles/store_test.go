package profiles_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/test/harness"
	"github.com/fleetprof/fleetprof/test/pg"
	"github.com/fleetprof/fleetprof/test/s3"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func mkProfile(t testing.TB, labels map[string]string, at time.Time, stacks [][]string, values []int64) profiles.Profile {
	t.Helper()
	p := profilestest.CPU(at, 10*time.Second, stacks, values)
	typ, total := profiles.Describe(p, labels[profiles.NameLabel])
	return profiles.Profile{Labels: labels, Type: typ, Time: at, Duration: 10 * time.Second, Total: total, Data: profilestest.Gzipped(p)}
}

func openStore(t testing.TB, dir string, o *profiles.Options) *profiles.DiskStore {
	t.Helper()
	s, err := profiles.Open(context.Background(), dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// backend is where a test's stores keep their blobs and index: the local
// directory and SQLite ("dir"), a fresh bucket of the package's versitygw
// and SQLite ("s3"), or that and a fresh PostgreSQL database ("s3+pg").
type backend struct {
	name   string
	bucket string
	dsn    string
}

// backends runs f once per backend, as subtests.
func backends(t *testing.T, f func(t *testing.T, b *backend)) {
	for _, name := range []string{"dir", "s3", "s3+pg"} {
		t.Run(name, func(t *testing.T) {
			b := &backend{name: name}
			if name != "dir" {
				b.bucket = sharedS3(t).Bucket(t)
			}
			if name == "s3+pg" {
				dsn, err := sharedPG(t).NewDatabase(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				b.dsn = dsn
			}
			f(t, b)
		})
	}
}

// exclusive: only one store writes the blobs (the startup cleanup may
// remove young orphans).
func (b *backend) exclusive() bool { return b.name == "dir" }

// options returns o (copied) with the backend's Blobs.
func (b *backend) options(t testing.TB, o *profiles.Options) *profiles.Options {
	t.Helper()
	var c profiles.Options
	if o != nil {
		c = *o
	}
	if b.bucket != "" {
		c.Blobs = s3Blobs(t, b.bucket)
	}
	c.IndexDSN = b.dsn
	return &c
}

// open opens a store in dir with the backend's blobs.
func (b *backend) open(t testing.TB, dir string, o *profiles.Options) *profiles.DiskStore {
	t.Helper()
	return openStore(t, dir, b.options(t, o))
}

func s3Blobs(t testing.TB, bucket string) *profiles.S3Blobs {
	t.Helper()
	srv := sharedS3(t)
	bl, err := profiles.NewS3Blobs(t.Context(), profiles.S3Options{
		Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "fleet-a", Insecure: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, MaxRetries: 1, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return bl
}

var s3srv struct {
	once sync.Once
	s    *s3.Server
	err  error
}

// sharedS3 starts the package's versitygw on first use; TestMain stops it.
func sharedS3(t testing.TB) *s3.Server {
	t.Helper()
	s3srv.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s3srv.s, s3srv.err = s3.Start(ctx)
	})
	harness.Require(t, s3srv.err)
	return s3srv.s
}

var pgsrv struct {
	once sync.Once
	s    *pg.Server
	err  error
}

// sharedPG starts the package's PostgreSQL on first use; TestMain stops it.
func sharedPG(t testing.TB) *pg.Server {
	t.Helper()
	pgsrv.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pgsrv.s, pgsrv.err = pg.Start(ctx)
	})
	if errors.Is(pgsrv.err, pg.ErrNotInstalled) && !harness.Required() {
		t.Skip(pgsrv.err)
	}
	if pgsrv.err != nil {
		t.Fatal(pgsrv.err)
	}
	return pgsrv.s
}

func TestMain(m *testing.M) {
	code := m.Run()
	if s3srv.s != nil {
		s3srv.s.Close()
	}
	if pgsrv.s != nil {
		pgsrv.s.Stop()
	}
	os.Exit(code)
}

// seed writes 6 windows of two series (nginx on node a, api on node b) to
// project p1 and one window to project p2.
func seed(t *testing.T, s profiles.Store) {
	t.Helper()
	var ps []profiles.Profile
	for i := range 6 {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		ps = append(ps,
			mkProfile(t, map[string]string{"__name__": "process_cpu", "unit": "nginx.service", "node": "a"}, at,
				[][]string{{"ngx_epoll_wait", "ngx_process_events", "main"}, {"ngx_http_handler", "main"}}, []int64{3, 1}),
			mkProfile(t, map[string]string{"__name__": "process_cpu", "unit": "api.service", "node": "b"}, at,
				[][]string{{"api.Serve", "main"}}, []int64{2}))
	}
	if err := s.Write(t.Context(), "p1", ps); err != nil {
		t.Fatal(err)
	}
	other := mkProfile(t, map[string]string{"__name__": "process_cpu", "unit": "nginx.service", "node": "a"}, t0,
		[][]string{{"secret_of_p2", "main"}}, []int64{5})
	if err := s.Write(t.Context(), "p2", []profiles.Profile{other}); err != nil {
		t.Fatal(err)
	}
}

func TestQueries(t *testing.T) { backends(t, testQueries) }

func testQueries(t *testing.T, b *backend) {
	s := b.open(t, t.TempDir(), nil)
	seed(t, s)
	ctx := t.Context()
	from, to := t0.Add(-time.Minute), t0.Add(time.Hour)

	types, err := s.ProfileTypes(ctx, "p1", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]profiles.ProfileType{{Name: "process_cpu", SampleType: "cpu", SampleUnit: "nanoseconds", PeriodType: "cpu", PeriodUnit: "nanoseconds"}}, types); diff != "" {
		t.Errorf("types (-want +got):\n%s", diff)
	}
	names, err := s.LabelNames(ctx, "p1", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"__name__", "node", "unit"}, names); diff != "" {
		t.Errorf("label names (-want +got):\n%s", diff)
	}
	vals, err := s.LabelValues(ctx, "p1", "unit", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"api.service", "nginx.service"}, vals); diff != "" {
		t.Errorf("label values (-want +got):\n%s", diff)
	}
	// Outside the range there is nothing.
	if vals, _ := s.LabelValues(ctx, "p1", "unit", t0.Add(time.Hour), t0.Add(2*time.Hour)); len(vals) != 0 {
		t.Errorf("values outside range: %v", vals)
	}

	period := int64(time.Second) / 19
	cases := []struct {
		sel       string
		wantFns   []string
		notFns    []string
		wantTotal int64
	}{
		{`{unit="nginx.service", node="a"}`, []string{"ngx_epoll_wait", "ngx_http_handler"}, []string{"api.Serve", "secret_of_p2"}, 6 * 4 * period},
		{`process_cpu{unit!="nginx.service"}`, []string{"api.Serve"}, []string{"ngx_epoll_wait"}, 6 * 2 * period},
		{`{unit=~"nginx.*|api.*"}`, []string{"api.Serve", "ngx_epoll_wait"}, []string{"secret_of_p2"}, 6 * 6 * period},
		{`{unit!~"nginx.*"}`, []string{"api.Serve"}, []string{"ngx_epoll_wait"}, 6 * 2 * period},
		{`process_cpu:cpu:nanoseconds:cpu:nanoseconds{node="b"}`, []string{"api.Serve"}, nil, 6 * 2 * period},
	}
	for _, c := range cases {
		t.Run(c.sel, func(t *testing.T) {
			q, err := profiles.NewQuery(c.sel, from, to)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Merge(ctx, "p1", q)
			if err != nil {
				t.Fatal(err)
			}
			fns := map[string]bool{}
			for _, f := range p.Function {
				fns[f.Name] = true
			}
			for _, f := range c.wantFns {
				if !fns[f] {
					t.Errorf("merged profile lacks %s", f)
				}
			}
			for _, f := range c.notFns {
				if fns[f] {
					t.Errorf("merged profile has %s", f)
				}
			}
			var total int64
			for _, smp := range p.Sample {
				total += smp.Value[0]
			}
			if total != c.wantTotal {
				t.Errorf("merged total %d, want %d", total, c.wantTotal)
			}
			top, err := s.Top(ctx, "p1", q, 0)
			if err != nil {
				t.Fatal(err)
			}
			if top.Total != c.wantTotal {
				t.Errorf("top total %d, want %d", top.Total, c.wantTotal)
			}
			fg, err := s.FlameGraph(ctx, "p1", q)
			if err != nil {
				t.Fatal(err)
			}
			if fg.Value != c.wantTotal {
				t.Errorf("flame graph total %d, want %d", fg.Value, c.wantTotal)
			}
		})
	}

	q, _ := profiles.NewQuery(`{unit="nginx.service"}`, from, to)
	top, err := s.Top(ctx, "p1", q, 2)
	if err != nil {
		t.Fatal(err)
	}
	wantTop := []profiles.TopEntry{
		{Name: "ngx_epoll_wait", Flat: 18 * period, FlatPercent: 75, Cum: 18 * period, CumPercent: 75},
		{Name: "ngx_http_handler", Flat: 6 * period, FlatPercent: 25, Cum: 6 * period, CumPercent: 25},
	}
	if diff := cmp.Diff(wantTop, top.Entries); diff != "" {
		t.Errorf("top (-want +got):\n%s", diff)
	}
	fg, err := s.FlameGraph(ctx, "p1", q)
	if err != nil {
		t.Fatal(err)
	}
	wantFG := &profiles.FlameNode{Name: "total", Value: 24 * period, Children: []*profiles.FlameNode{
		{Name: "main", Value: 24 * period, Children: []*profiles.FlameNode{
			{Name: "ngx_http_handler", Value: 6 * period, Self: 6 * period},
			{Name: "ngx_process_events", Value: 18 * period, Children: []*profiles.FlameNode{
				{Name: "ngx_epoll_wait", Value: 18 * period, Self: 18 * period}}},
		}},
	}}
	if diff := cmp.Diff(wantFG, fg); diff != "" {
		t.Errorf("flame graph (-want +got):\n%s", diff)
	}

	series, err := s.Series(ctx, "p1", q)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 || len(series[0].Points) != 6 || series[0].Points[0].Total != 4*period || !series[0].Points[5].Time.Equal(t0.Add(50*time.Second)) {
		t.Errorf("series: %+v", series)
	}

	// Project scoping: p2 sees only its own profile.
	p, err := s.Merge(ctx, "p2", q)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Function) != 2 || (p.Function[0].Name != "secret_of_p2" && p.Function[1].Name != "secret_of_p2") {
		t.Errorf("p2 merge: %v", p.Function)
	}
	if _, err := s.Merge(ctx, "p3", q); !errors.Is(err, profiles.ErrNotFound) {
		t.Errorf("unknown project: %v, want ErrNotFound", err)
	}
}

func TestMixedTypesRejected(t *testing.T) { backends(t, testMixedTypesRejected) }

func testMixedTypesRejected(t *testing.T, be *backend) {
	s := be.open(t, t.TempDir(), nil)
	a := mkProfile(t, map[string]string{"__name__": "process_cpu"}, t0, [][]string{{"f"}}, []int64{1})
	b := mkProfile(t, map[string]string{"__name__": "other"}, t0, [][]string{{"g"}}, []int64{1})
	if err := s.Write(t.Context(), "p", []profiles.Profile{a, b}); err != nil {
		t.Fatal(err)
	}
	q, _ := profiles.NewQuery("", t0.Add(-time.Hour), t0.Add(time.Hour))
	if _, err := s.Merge(t.Context(), "p", q); !errors.Is(err, profiles.ErrInvalid) || !strings.Contains(err.Error(), "2 profile types") {
		t.Errorf("merge of two types: %v", err)
	}
}

func TestCompactionAndRetention(t *testing.T) { backends(t, testCompactionAndRetention) }

func testCompactionAndRetention(t *testing.T, b *backend) {
	now := t0.Add(3 * time.Hour)
	dir := t.TempDir()
	s := b.open(t, dir, &profiles.Options{Now: func() time.Time { return now }, CompactInterval: 5 * time.Minute, Retention: 150 * time.Minute})
	var ps []profiles.Profile
	for i := range 60 { // 10 minutes at 10 s windows, starting 3 h ago
		ps = append(ps, mkProfile(t, map[string]string{"__name__": "process_cpu", "unit": "x"}, t0.Add(time.Duration(i)*10*time.Second),
			[][]string{{"work", "main"}}, []int64{1}))
	}
	// and 6 recent windows (not compacted: younger than CompactAfter)
	for i := range 6 {
		ps = append(ps, mkProfile(t, map[string]string{"__name__": "process_cpu", "unit": "x"}, now.Add(-time.Duration(i+1)*10*time.Second),
			[][]string{{"recent", "main"}}, []int64{1}))
	}
	ctx := t.Context()
	if err := s.Write(ctx, "p", ps); err != nil {
		t.Fatal(err)
	}
	q, _ := profiles.NewQuery(`{unit="x"}`, t0.Add(-time.Hour), now)
	before, err := s.Top(ctx, "p", q, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	rows, blobs, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 2+6 || blobs != rows {
		t.Errorf("after compaction: %d rows, %d blobs; want 8 and 8", rows, blobs)
	}
	after, err := s.Top(ctx, "p", q, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("compaction changed the merged profile (-before +after):\n%s", diff)
	}
	series, _ := s.Series(ctx, "p", q)
	if len(series) != 1 || len(series[0].Points) != 8 || series[0].Points[0].Duration != 5*time.Minute {
		t.Errorf("series after compaction: %+v", series)
	}
	// Retention of 150 minutes drops the two old compacted windows.
	if err := s.Retain(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, blobs, _ := s.Stats(ctx); rows != 6 || blobs != 6 {
		t.Errorf("after retention: %d rows, %d blobs; want 6", rows, blobs)
	}
	// A size cap keeps only what fits, newest first.
	s.Close()
	one := int64(len(ps[0].Data))
	s2 := b.open(t, dir, &profiles.Options{Now: func() time.Time { return now }, MaxBytes: 3*one + one/2})
	if err := s2.Retain(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, blobs, _ := s2.Stats(ctx); rows != 3 || blobs != 3 {
		t.Errorf("after size retention: %d rows, %d blobs; want 3", rows, blobs)
	}
}

func TestCleanup(t *testing.T) { backends(t, testCleanup) }

func testCleanup(t *testing.T, b *backend) {
	dir := t.TempDir()
	s := b.open(t, dir, nil)
	seed(t, s)
	ctx := t.Context()
	// An orphan blob, a stale temp file, and a row whose blob vanished.
	const orphan = "projects/p1/2025/03/01/12/1-orphan.pb.gz"
	if err := s.Blobs().Put(ctx, orphan, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "blob-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	var victim string
	if err := s.Blobs().List(ctx, "projects/p2/", func(bi profiles.BlobInfo) error { victim = bi.Key; return nil }); err != nil || victim == "" {
		t.Fatalf("list blobs of p2: %q, %v", victim, err)
	}
	if err := s.Blobs().Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	exists := func() bool {
		ok, err := s.Blobs().Exists(ctx, orphan)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// The periodic cleanup leaves young orphans alone (a write may be in flight)...
	if err := s.Cleanup(ctx, false); err != nil {
		t.Fatal(err)
	}
	if !exists() {
		t.Errorf("young orphan removed by periodic cleanup")
	}
	// ...but removes dangling rows; the startup cleanup removes every
	// orphan when the store is the only writer of its blobs.
	s.Close()
	s = b.open(t, dir, nil)
	if exists() == b.exclusive() {
		t.Errorf("orphan there after startup cleanup: %v; want %v", exists(), !b.exclusive())
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
	if !b.exclusive() {
		// Shared blobs: orphans go once older than the grace period.
		s.Close()
		s = b.open(t, dir, &profiles.Options{Now: func() time.Time { return time.Now().Add(2 * time.Minute) }})
		if exists() {
			t.Errorf("old orphan still there")
		}
	}
	rows, blobs, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 12 || blobs != 12 {
		t.Errorf("after cleanup: %d rows, %d blobs; want 12 and 12", rows, blobs)
	}
}

// TestCrashDuringIngest SIGKILLs a child process (this test binary) while
// it writes profiles as fast as it can, then reopens the store: after the
// startup cleanup, the index and the blobs agree and every blob parses.
func TestCrashDuringIngest(t *testing.T) {
	if dir := os.Getenv("FLEETPROF_PROFILES_CRASH_CHILD"); dir != "" {
		crashChild(t, dir, os.Getenv("FLEETPROF_PROFILES_CRASH_S3"), os.Getenv("FLEETPROF_PROFILES_CRASH_PG"))
		return
	}
	backends(t, testCrashDuringIngest)
}

func testCrashDuringIngest(t *testing.T, b *backend) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"FLEETPROF_PROFILES_CRASH_CHILD=" + dir}
	blobs := profiles.Blobs(nil)
	if b.bucket != "" {
		srv := sharedS3(t)
		env = append(env, "FLEETPROF_PROFILES_CRASH_S3="+strings.Join([]string{srv.Endpoint, b.bucket, srv.AccessKey, srv.SecretKey}, " "),
			"FLEETPROF_PROFILES_CRASH_PG="+b.dsn)
		blobs = s3Blobs(t, b.bucket)
	} else if blobs, err = profiles.NewDirBlobs(filepath.Join(dir, "blobs")); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		n := 0
		blobs.List(t.Context(), "", func(profiles.BlobInfo) error { n++; return nil })
		return n
	}
	for round := range 3 {
		cmd := exec.Command(exe, "-test.run=^TestCrashDuringIngest$")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Let it write for a while (opening the store takes a moment).
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			if count() > 50*(round+1) {
				break
			}
		}
		time.Sleep(time.Duration(100+round*137) * time.Millisecond)
		cmd.Process.Kill() // SIGKILL
		cmd.Wait()
	}
	// An object store may still finish an upload whose client died: wait
	// until the blobs stop changing, or the cleanup below may list them
	// one short (seen: 814 rows, 815 blobs).
	for n, last := count(), -1; n != last; n = count() {
		last = n
		time.Sleep(500 * time.Millisecond)
	}
	var o *profiles.Options
	if !b.exclusive() {
		// Shared blobs: the startup cleanup spares orphans younger than
		// the grace period, so look from a minute and more ahead.
		o = &profiles.Options{Now: func() time.Time { return time.Now().Add(2 * time.Minute) }}
	}
	s := b.open(t, dir, o)
	ctx := context.Background()
	rows, nblobs, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows == 0 || rows != nblobs {
		t.Fatalf("after crash and cleanup: %d rows, %d blobs", rows, nblobs)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp files left: %d", len(ents))
	}
	q, _ := profiles.NewQuery(`{__name__="process_cpu"}`, t0.Add(-time.Hour), t0.Add(1000*time.Hour))
	series, err := s.Series(ctx, "p", q)
	if err != nil {
		t.Fatal(err)
	}
	points := 0
	for _, se := range series {
		points += len(se.Points)
	}
	if points != rows {
		t.Errorf("series have %d points, index has %d rows", points, rows)
	}
	p, err := s.Merge(ctx, "p", q)
	if err != nil {
		t.Fatalf("merge after crash: %v", err)
	}
	var total int64
	for _, smp := range p.Sample {
		total += smp.Value[0]
	}
	if total != int64(rows)*(int64(time.Second)/19) {
		t.Errorf("merged total %d over %d profiles", total, rows)
	}
	t.Logf("%d profiles survived 3 SIGKILLs", rows)
}

func crashChild(t *testing.T, dir, s3env, dsn string) {
	o := profiles.Options{IndexDSN: dsn}
	if s3env != "" {
		f := strings.Fields(s3env)
		bl, err := profiles.NewS3Blobs(context.Background(), profiles.S3Options{
			Endpoint: f[0], Bucket: f[1], Prefix: "fleet-a", Insecure: true, AccessKeyID: f[2], SecretAccessKey: f[3],
		})
		if err != nil {
			t.Fatal(err)
		}
		o.Blobs = bl
	}
	s, err := profiles.Open(context.Background(), dir, &o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	errc := make(chan error, 4)
	for w := range 4 {
		go func() {
			for i := 0; ; i++ {
				at := t0.Add(time.Duration(i) * time.Second)
				p := profilestest.CPU(at, time.Second, [][]string{{"busy", "main"}}, []int64{1})
				typ, total := profiles.Describe(p, "process_cpu")
				pr := profiles.Profile{Labels: map[string]string{"__name__": "process_cpu", "w": string(rune('a' + w))},
					Type: typ, Time: at, Duration: time.Second, Total: total, Data: profilestest.Gzipped(p)}
				if err := s.Write(ctx, "p", []profiles.Profile{pr, pr}); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	t.Fatal(<-errc)
}

func TestParseSelector(t *testing.T) {
	cases := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{``, nil, false},
		{`{}`, nil, false},
		{`process_cpu`, []string{`__name__="process_cpu"`}, false},
		{`{unit="nginx.service", node="a"}`, []string{`unit="nginx.service"`, `node="a"`}, false},
		{`x{a!="1",b=~"2.*", c!~"3"}`, []string{`__name__="x"`, `a!="1"`, `b=~"2.*"`, `c!~"3"`}, false},
		{`{a="with \"quote\""}`, []string{`a="with \"quote\""`}, false},
		{`{a="1"`, nil, true},
		{`{a=1}`, nil, true},
		{`{a=~"("}`, nil, true},
		{`{="x"}`, nil, true},
		{`{a="1" b="2"}`, nil, true},
		{`a:b{}`, nil, true},
	}
	for _, c := range cases {
		ms, err := profiles.ParseSelector(c.in)
		if c.wantErr {
			if !errors.Is(err, profiles.ErrInvalid) {
				t.Errorf("%s: err %v, want ErrInvalid", c.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		var got []string
		for _, m := range ms {
			got = append(got, m.String())
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.in, diff)
		}
	}
}

var _ = profile.Merge
