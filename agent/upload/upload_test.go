package upload_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprof/fleetprof/agent/upload"
	profilestorev1alpha1 "github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
	pushv1 "github.com/fleetprof/fleetprof/internal/pb/push/v1"
	"github.com/fleetprof/fleetprof/internal/pb/push/v1/pushv1connect"
	"google.golang.org/protobuf/proto"
)

// backend is a Parca + Pyroscope receiver on a fixed loopback address
// that can be stopped and started again.
type backend struct {
	t    *testing.T
	addr string

	mu      sync.Mutex
	srv     *http.Server
	seqs    []int // "seq" label of every received profile, in order
	labels  []map[string]string
	auths   []string
	rawBody [][]byte
	status  func(auth string) error // nil: accept
}

func newBackend(t *testing.T) *backend {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{t: t, addr: l.Addr().String()}
	b.serve(l)
	t.Cleanup(b.stop)
	return b
}

func (b *backend) serve(l net.Listener) {
	mux := http.NewServeMux()
	mux.Handle(profilestorev1alpha1connect.NewProfileStoreServiceHandler(b))
	mux.Handle(pushv1connect.NewPusherServiceHandler(b))
	raw := http.NewServeMux()
	raw.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == profilestorev1alpha1connect.ProfileStoreServiceWriteRawProcedure {
			body, _ := io.ReadAll(r.Body)
			b.mu.Lock()
			b.rawBody = append(b.rawBody, body)
			b.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: raw, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(l)
}

func (b *backend) stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (b *backend) start() {
	var l net.Listener
	var err error
	for range 50 { // the port may linger briefly
		if l, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatal(err)
	}
	b.serve(l)
}

func (b *backend) record(auth string, labels map[string]string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.status != nil {
		if err := b.status(auth); err != nil {
			return err
		}
	}
	b.auths = append(b.auths, auth)
	b.labels = append(b.labels, labels)
	if s, ok := labels["seq"]; ok {
		n, _ := strconv.Atoi(s)
		b.seqs = append(b.seqs, n)
	}
	return nil
}

func (b *backend) WriteRaw(_ context.Context, req *connect.Request[profilestorev1alpha1.WriteRawRequest]) (*connect.Response[profilestorev1alpha1.WriteRawResponse], error) {
	for _, s := range req.Msg.Series {
		l := map[string]string{}
		for _, x := range s.Labels.Labels {
			l[x.Name] = x.Value
		}
		if err := b.record(req.Header().Get("Authorization"), l); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&profilestorev1alpha1.WriteRawResponse{}), nil
}

func (b *backend) Push(_ context.Context, req *connect.Request[pushv1.PushRequest]) (*connect.Response[pushv1.PushResponse], error) {
	for _, s := range req.Msg.Series {
		l := map[string]string{}
		for _, x := range s.Labels {
			l[x.Name] = x.Value
		}
		if err := b.record(req.Header().Get("Authorization"), l); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&pushv1.PushResponse{}), nil
}

func (b *backend) received() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.seqs...)
}

func run(t *testing.T, u *upload.Uploader) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- u.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func seqBatch(n int) []upload.Profile {
	return []upload.Profile{{Labels: map[string]string{"seq": strconv.Itoa(n), "node": "a"}, Start: time.Now(), Duration: 200 * time.Millisecond, Data: bytes.Repeat([]byte{0x1f, 0x8b, byte(n)}, 100)}}
}

// TestWriteRawGolden checks the bytes our uploader puts on the wire against
// Parca's published field numbers (parca.profilestore.v1alpha1):
// WriteRawRequest{tenant=1, series=2, normalized=3},
// RawProfileSeries{labels=1, samples=2}, LabelSet{labels=1},
// Label{name=1, value=2}, RawSample{raw_profile=1}.
func TestWriteRawGolden(t *testing.T) {
	b := newBackend(t)
	u, err := upload.New(upload.Options{Address: b.addr, Insecure: true, Token: func() string { return "tok1" }})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	u.Enqueue([]upload.Profile{{Labels: map[string]string{"node": "a"}, Data: []byte{0x1f, 0x8b, 0x01}}})
	waitFor(t, 10*time.Second, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.rawBody) > 0 })
	b.mu.Lock()
	body, auth := b.rawBody[0], b.auths[0]
	b.mu.Unlock()
	if auth != "Bearer tok1" {
		t.Errorf("Authorization %q", auth)
	}
	golden := []byte{
		0x12, 0x2d, // WriteRawRequest.series (field 2, bytes), 45 bytes
		/**/ 0x0a, 0x24, // RawProfileSeries.labels (field 1), 36 bytes
		/*    */ 0x0a, 0x17, // LabelSet.labels (field 1), 23 bytes
		/*        */ 0x0a, 0x08, '_', '_', 'n', 'a', 'm', 'e', '_', '_', // Label.name (1)
		/*        */ 0x12, 0x0b, 'p', 'r', 'o', 'c', 'e', 's', 's', '_', 'c', 'p', 'u', // Label.value (2)
		/*    */ 0x0a, 0x09, // LabelSet.labels, 9 bytes
		/*        */ 0x0a, 0x04, 'n', 'o', 'd', 'e',
		/*        */ 0x12, 0x01, 'a',
		/**/ 0x12, 0x05, // RawProfileSeries.samples (field 2), 5 bytes
		/*    */ 0x0a, 0x03, 0x1f, 0x8b, 0x01, // RawSample.raw_profile (field 1)
		0x18, 0x01, // WriteRawRequest.normalized (field 3, varint) = true
	}
	// gRPC framing: flag byte (0 = uncompressed) and big-endian length.
	want := append([]byte{0, 0, 0, 0, byte(len(golden))}, golden...)
	if !bytes.Equal(body, want) {
		t.Errorf("wire bytes\n got % x\nwant % x", body, want)
	}
	var req profilestorev1alpha1.WriteRawRequest
	if err := proto.Unmarshal(golden, &req); err != nil || req.Series[0].Labels.Labels[1].Value != "a" || !req.Normalized {
		t.Errorf("golden does not decode as expected: %v %v", err, &req)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.Metric {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			return sum
		}
	}
	return 0
}

// TestOutage stops the backend for 12 windows of 200 ms while a producer
// keeps enqueueing; with a memory queue of 2 batches and a spool, every
// window arrives after the restart, in order, none twice.
func TestOutage(t *testing.T) {
	b := newBackend(t)
	reg := prometheus.NewRegistry()
	spool := t.TempDir()
	u, err := upload.New(upload.Options{Address: b.addr, Insecure: true, SpoolDir: spool, MaxQueue: 2,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Timeout: time.Second, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	const window = 200 * time.Millisecond
	maxMem, maxSpool := 0, 0
	n := 0
	produce := func(windows int) {
		for range windows {
			u.Enqueue(seqBatch(n))
			n++
			m, s := u.QueueLen()
			maxMem, maxSpool = max(maxMem, m), max(maxSpool, s)
			time.Sleep(window)
		}
	}
	produce(3)
	b.stop()
	produce(12)
	b.start()
	produce(3)
	waitFor(t, 20*time.Second, func() bool { return len(b.received()) >= n })
	time.Sleep(300 * time.Millisecond) // would catch a late duplicate
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	if diff := cmp.Diff(want, b.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	if maxMem > 2 {
		t.Errorf("memory queue held %d batches, bound is 2", maxMem)
	}
	if maxSpool < 5 {
		t.Errorf("spool peaked at %d batches; the outage should have filled it", maxSpool)
	}
	if d := counter(t, reg, "fleetprof_upload_dropped_batches_total"); d != 0 {
		t.Errorf("%v batches dropped", d)
	}
	if m, s := u.QueueLen(); m != 0 || s != 0 {
		t.Errorf("queue not empty: %d in memory, %d spooled", m, s)
	}
}

// TestMemoryOnlyDropsOldest: without a spool the queue keeps the newest
// MaxQueue batches, drops the oldest and counts them.
func TestMemoryOnlyDropsOldest(t *testing.T) {
	b := newBackend(t)
	b.stop()
	reg := prometheus.NewRegistry()
	u, err := upload.New(upload.Options{Address: b.addr, Insecure: true, MaxQueue: 3,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		u.Enqueue(seqBatch(i))
	}
	if m, _ := u.QueueLen(); m != 3 {
		t.Errorf("memory queue %d, want 3", m)
	}
	b.start()
	run(t, u)
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) >= 3 })
	time.Sleep(100 * time.Millisecond)
	if diff := cmp.Diff([]int{7, 8, 9}, b.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	if d := counter(t, reg, "fleetprof_upload_dropped_batches_total"); d != 7 {
		t.Errorf("dropped %v, want 7", d)
	}
}

// TestSpoolSurvivesRestart: batches spooled by one uploader are sent by
// the next one over the same spool dir.
func TestSpoolSurvivesRestart(t *testing.T) {
	b := newBackend(t)
	b.stop()
	spool := t.TempDir()
	u1, err := upload.New(upload.Options{Address: b.addr, Insecure: true, SpoolDir: spool, MaxQueue: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		u1.Enqueue(seqBatch(i))
	}
	// Batch 0 was in memory and is lost with u1; 1..4 are on disk.
	b.start()
	u2, err := upload.New(upload.Options{Address: b.addr, Insecure: true, SpoolDir: spool, MaxQueue: 1})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u2)
	u2.Enqueue(seqBatch(5))
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) >= 5 })
	if diff := cmp.Diff([]int{1, 2, 3, 4, 5}, b.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
}

// TestUnauthorizedRetry: on 401 the uploader calls OnUnauthorized and
// retries once with the then-current token.
func TestUnauthorizedRetry(t *testing.T) {
	b := newBackend(t)
	b.status = func(auth string) error {
		if auth != "Bearer new" {
			return connect.NewError(connect.CodeUnauthenticated, errors.New("token expired"))
		}
		return nil
	}
	var mu sync.Mutex
	tok, calls := "old", 0
	u, err := upload.New(upload.Options{Address: b.addr, Insecure: true,
		Token:          func() string { mu.Lock(); defer mu.Unlock(); return tok },
		OnUnauthorized: func() { mu.Lock(); defer mu.Unlock(); tok = "new"; calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	u.Enqueue(seqBatch(0))
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("OnUnauthorized called %d times", calls)
	}
}

// TestPermanentRejection: an InvalidArgument answer drops the batch
// instead of blocking the queue.
func TestPermanentRejection(t *testing.T) {
	b := newBackend(t)
	b.status = func(string) error {
		b.status = nil // only the first batch
		return connect.NewError(connect.CodeInvalidArgument, errors.New("corrupt pprof"))
	}
	u, err := upload.New(upload.Options{Address: b.addr, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	u.Enqueue(seqBatch(0))
	u.Enqueue(seqBatch(1))
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) == 1 })
	if diff := cmp.Diff([]int{1}, b.received()); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
}

// TestPyroscopeAndSwitch pushes to Pyroscope, then switches to Parca live.
func TestPyroscopeAndSwitch(t *testing.T) {
	b := newBackend(t)
	u, err := upload.New(upload.Options{Address: "http://" + b.addr, Protocol: upload.ProtocolPyroscope, Token: func() string { return "t" }})
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	u.Enqueue([]upload.Profile{{Labels: map[string]string{"unit": "nginx.service", "seq": "0"}, Data: []byte{1}}})
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) == 1 })
	b.mu.Lock()
	got := b.labels[0]
	b.mu.Unlock()
	want := map[string]string{"__name__": "process_cpu", "service_name": "nginx.service", "unit": "nginx.service", "seq": "0"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pyroscope labels (-want +got):\n%s", diff)
	}
	if err := u.ApplyConfig(b.addr, "bogus", true); !errors.Is(err, upload.ErrConfig) {
		t.Errorf("bogus protocol: %v", err)
	}
	if err := u.ApplyConfig(b.addr, upload.ProtocolParca, true); err != nil {
		t.Fatal(err)
	}
	u.Enqueue(seqBatch(1))
	waitFor(t, 10*time.Second, func() bool { return len(b.received()) == 2 })
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.rawBody) != 1 {
		t.Errorf("parca requests after switch: %d", len(b.rawBody))
	}
}
