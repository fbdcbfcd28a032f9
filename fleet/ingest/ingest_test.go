package ingest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/fleetprof/fleetprof/fleet/ingest"
	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	profilestorev1alpha1 "github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
	pushv1 "github.com/fleetprof/fleetprof/internal/pb/push/v1"
	"github.com/fleetprof/fleetprof/internal/pb/push/v1/pushv1connect"
	typesv1 "github.com/fleetprof/fleetprof/internal/pb/types/v1"
	"github.com/fleetprof/fleetprof/internal/token"
)

// fakeAuth maps tokens to a project or an error.
type fakeAuth map[string]any

func (f fakeAuth) AuthorizeWrite(_ context.Context, bearer string) (string, error) {
	switch v := f[bearer].(type) {
	case string:
		return v, nil
	case error:
		return "", v
	}
	return "", fmt.Errorf("verify token: %w", token.ErrSignature)
}

var auth = fakeAuth{
	"tok-a":       "proj-a",
	"tok-b":       "proj-b",
	"tok-revoked": fmt.Errorf("verify token: %w", token.ErrRevoked),
	"tok-enroll":  fmt.Errorf("need writeProfiles: %w", token.ErrScope),
}

type env struct {
	store *profiles.DiskStore
	url   string
	parca profilestorev1alpha1connect.ProfileStoreServiceClient
	push  pushv1connect.PusherServiceClient
}

func newEnv(t *testing.T, lim ingest.Limits) *env {
	t.Helper()
	st, err := profiles.Open(t.Context(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h, err := ingest.New(ingest.Options{Store: st, Auth: auth, Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	h2c := &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}}
	return &env{
		store: st,
		url:   srv.URL,
		parca: profilestorev1alpha1connect.NewProfileStoreServiceClient(h2c, srv.URL, connect.WithGRPC()),
		push:  pushv1connect.NewPusherServiceClient(http.DefaultClient, srv.URL),
	}
}

func h2cOnly() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func cpu(fn string) []byte {
	return profilestest.Gzipped(profilestest.CPU(t0, 10*time.Second, [][]string{{fn, "main"}}, []int64{7}))
}

func writeRaw(e *env, tok string, req *profilestorev1alpha1.WriteRawRequest) error {
	r := connect.NewRequest(req)
	r.Header().Set("Authorization", "Bearer "+tok)
	_, err := e.parca.WriteRaw(context.Background(), r)
	return err
}

func parcaReq(labels map[string]string, raws ...[]byte) *profilestorev1alpha1.WriteRawRequest {
	ls := &profilestorev1alpha1.LabelSet{}
	for k, v := range labels {
		ls.Labels = append(ls.Labels, &profilestorev1alpha1.Label{Name: k, Value: v})
	}
	s := &profilestorev1alpha1.RawProfileSeries{Labels: ls}
	for _, r := range raws {
		s.Samples = append(s.Samples, &profilestorev1alpha1.RawSample{RawProfile: r})
	}
	return &profilestorev1alpha1.WriteRawRequest{Series: []*profilestorev1alpha1.RawProfileSeries{s}}
}

func postIngest(t *testing.T, e *env, tok, name string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", e.url+"/ingest?format=pprof&name="+url.QueryEscape(name), bytes.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func merged(t *testing.T, e *env, project, sel string) map[string]bool {
	t.Helper()
	q, err := profiles.NewQuery(sel, t0.Add(-time.Hour), t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.store.Merge(t.Context(), project, q)
	if err != nil {
		t.Fatalf("merge %s: %v", sel, err)
	}
	fns := map[string]bool{}
	for _, f := range p.Function {
		fns[f.Name] = true
	}
	return fns
}

func TestIngestAllProtocols(t *testing.T) {
	e := newEnv(t, ingest.Limits{})
	// Parca WriteRaw over gRPC (HTTP/2 cleartext).
	if err := writeRaw(e, "tok-a", parcaReq(map[string]string{"__name__": "process_cpu", "unit": "nginx.service", "project": "proj-a"}, cpu("via_parca"))); err != nil {
		t.Fatal(err)
	}
	// Pyroscope push over Connect (HTTP/1.1).
	preq := connect.NewRequest(&pushv1.PushRequest{Series: []*pushv1.RawProfileSeries{{
		Labels:  []*typesv1.LabelPair{{Name: "__name__", Value: "process_cpu"}, {Name: "service_name", Value: "api"}},
		Samples: []*pushv1.RawSample{{RawProfile: cpu("via_push"), ID: "x"}},
	}}})
	preq.Header().Set("Authorization", "Bearer tok-a")
	if _, err := e.push.Push(t.Context(), preq); err != nil {
		t.Fatal(err)
	}
	// curl-style POST /ingest, gzipped and not.
	if st, body := postIngest(t, e, "tok-a", `process_cpu{unit="curl.service"}`, cpu("via_curl_gz")); st != 200 {
		t.Fatalf("POST /ingest: %d %s", st, body)
	}
	var plain bytes.Buffer
	profilestest.CPU(t0, time.Second, [][]string{{"via_curl_plain"}}, []int64{1}).WriteUncompressed(&plain)
	if st, body := postIngest(t, e, "tok-a", `{unit="curl.service"}`, plain.Bytes()); st != 200 || !strings.Contains(body, `"profiles":1`) {
		t.Fatalf("POST /ingest plain: %d %s", st, body)
	}
	got := merged(t, e, "proj-a", `process_cpu`)
	for _, fn := range []string{"via_parca", "via_push", "via_curl_gz", "via_curl_plain"} {
		if !got[fn] {
			t.Errorf("merged profile of proj-a lacks %s (has %v)", fn, got)
		}
	}
	// The project label was dropped: the project is the token's.
	names, _ := e.store.LabelNames(t.Context(), "proj-a", t0.Add(-time.Hour), t0.Add(time.Hour))
	for _, n := range names {
		if n == "project" {
			t.Errorf("project label stored: %v", names)
		}
	}
	if fns := merged(t, e, "proj-a", `{unit="curl.service"}`); !fns["via_curl_plain"] || fns["via_parca"] {
		t.Errorf("selector on curl labels: %v", fns)
	}
}

// bomb is a valid gzip stream of mib MiB of zeros: mib members of 1 MiB
// each (gzip readers read on across members), so the trailer of the last
// member says 1 MiB and only a limit on what is read stops it.
func bomb(mib int) []byte {
	var one bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&one, gzip.BestCompression)
	zw.Write(make([]byte, 1<<20))
	zw.Close()
	return bytes.Repeat(one.Bytes(), mib)
}

// honestBomb is a single gzip member of n zero bytes, n written in the
// trailer.
func honestBomb(n int) []byte {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
	zw.Write(make([]byte, n))
	zw.Close()
	return b.Bytes()
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

func TestBadUploads(t *testing.T) {
	e := newEnv(t, ingest.Limits{})
	// One good profile so that "unchanged" is not trivially empty.
	if err := writeRaw(e, "tok-a", parcaReq(map[string]string{"__name__": "process_cpu"}, cpu("good"))); err != nil {
		t.Fatal(err)
	}
	rows0, blobs0, _ := e.store.Stats(t.Context())
	good := cpu("evil")
	corruptGz := append([]byte{}, good...)
	corruptGz[len(corruptGz)/2] ^= 0xff
	corruptGz[len(corruptGz)/2+1] ^= 0xff
	garbage := gz([]byte("this is not a protocol buffer \xff\xff\xff\xff\xff"))
	bigBomb := bomb(200)
	many := map[string]string{"__name__": "process_cpu"}
	var manyName strings.Builder
	manyName.WriteString("process_cpu{")
	for i := range 10000 {
		many[fmt.Sprintf("l%d", i)] = "v"
		fmt.Fprintf(&manyName, `l%d="v",`, i)
	}
	manyName.WriteString(`x="y"}`)

	cases := []struct {
		name     string
		tok      string
		labels   map[string]string
		httpName string
		raw      []byte
		code     connect.Code
		status   int
		msg      string
	}{
		{"wrong token", "tok-nope", nil, "", good, connect.CodeUnauthenticated, 401, "signature"},
		{"no token", "", nil, "", good, connect.CodeUnauthenticated, 401, "missing bearer token"},
		{"revoked token", "tok-revoked", nil, "", good, connect.CodeUnauthenticated, 401, "revoked"},
		{"token without writeProfiles", "tok-enroll", nil, "", good, connect.CodePermissionDenied, 403, "may not write profiles"},
		{"project A claims B", "tok-a", map[string]string{"project": "proj-b"}, `x{project="proj-b"}`, good, connect.CodePermissionDenied, 403, "claims another project"},
		{"corrupt gzip", "tok-a", nil, "", corruptGz, connect.CodeInvalidArgument, 400, "corrupt gzip"},
		{"gzip of garbage", "tok-a", nil, "", garbage, connect.CodeInvalidArgument, 400, "corrupt pprof"},
		{"plain garbage", "tok-a", nil, "", []byte("garbage"), connect.CodeInvalidArgument, 400, "corrupt pprof"},
		{"200 MiB decompression bomb", "tok-a", nil, "", bigBomb, connect.CodeResourceExhausted, 413, "decompressed profile exceeds"},
		{"17 MiB single-member bomb", "tok-a", nil, "", honestBomb(17 << 20), connect.CodeResourceExhausted, 413, "gzip trailer says"},
		{"10,000 labels", "tok-a", many, manyName.String(), good, connect.CodeInvalidArgument, 400, "labels, more than 64"},
		{"bad label name", "tok-a", map[string]string{"0bad": "x"}, `x{__type__="y"}`, good, connect.CodeInvalidArgument, 400, "label name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			before := ms.TotalAlloc
			err := writeRaw(e, c.tok, parcaReq(c.labels, c.raw))
			if connect.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("WriteRaw: %v (code %v); want code %v with %q", err, connect.CodeOf(err), c.code, c.msg)
			}
			runtime.ReadMemStats(&ms)
			if alloc := ms.TotalAlloc - before; c.raw[0] == 0x1f && len(c.raw) == len(bigBomb) && alloc > 100<<20 {
				t.Errorf("bomb allocated %d MiB", alloc>>20)
			}
			name := c.httpName
			if name == "" {
				name = "process_cpu"
			}
			st, body := postIngest(t, e, c.tok, name, c.raw)
			if st != c.status || !strings.Contains(body, c.msg) && c.name != "bad label name" {
				t.Errorf("POST /ingest: %d %s; want %d with %q", st, body, c.status, c.msg)
			}
			var env struct {
				Error struct{ Code, Message string }
			}
			if json.Unmarshal([]byte(body), &env) != nil || env.Error.Code == "" {
				t.Errorf("no error envelope: %s", body)
			}
			if rows, blobs, _ := e.store.Stats(t.Context()); rows != rows0 || blobs != blobs0 {
				t.Errorf("store changed: %d rows %d blobs, want %d %d", rows, blobs, rows0, blobs0)
			}
		})
	}

	// A request with one good and one bad profile stores nothing.
	err := writeRaw(e, "tok-a", parcaReq(nil, cpu("half1"), garbage))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("half-bad request: %v", err)
	}
	if rows, blobs, _ := e.store.Stats(t.Context()); rows != rows0 || blobs != blobs0 {
		t.Errorf("half-bad request stored something: %d rows %d blobs", rows, blobs)
	}
	// Tenant field naming another project.
	req := parcaReq(nil, good)
	req.Tenant = "proj-b"
	if err := writeRaw(e, "tok-a", req); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("tenant of another project: %v", err)
	}
}

func TestRequestSizeLimit(t *testing.T) {
	e := newEnv(t, ingest.Limits{MaxRequestBytes: 64 << 10})
	big := profilestest.Sized(t0, time.Second, 200<<10, 1)
	if st, body := postIngest(t, e, "tok-a", "process_cpu", big); st != 413 || !strings.Contains(body, "exceeds") && !strings.Contains(body, "more than") {
		t.Errorf("POST /ingest of %d bytes: %d %s", len(big), st, body)
	}
	if err := writeRaw(e, "tok-a", parcaReq(nil, big)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("WriteRaw of %d bytes: %v", len(big), err)
	}
	small := profilestest.Sized(t0, time.Second, 8<<10, 1)
	if err := writeRaw(e, "tok-a", parcaReq(nil, small)); err != nil {
		t.Errorf("small WriteRaw: %v", err)
	}
	e2 := newEnv(t, ingest.Limits{MaxSamples: 10})
	if err := writeRaw(e2, "tok-a", parcaReq(nil, small)); connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "samples") {
		t.Errorf("sample limit: %v", err)
	}
}
