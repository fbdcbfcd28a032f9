package ingest_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/fleetprof/fleetprof/fleet/ingest"
	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/internal/pb/parca/profilestore/v1alpha1/profilestorev1alpha1connect"
	"github.com/fleetprof/fleetprof/test/s3"
)

// TestStorageUnavailable puts the profile blobs on a real S3 server
// (versitygw) and stops it: every protocol answers 503 / Unavailable with
// Retry-After, nothing is indexed, and uploads succeed again once it is
// back.
func TestStorageUnavailable(t *testing.T) {
	srv := s3.New(t)
	bl, err := profiles.NewS3Blobs(t.Context(), profiles.S3Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket(t), Insecure: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, MaxRetries: 1, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := profiles.Open(t.Context(), t.TempDir(), &profiles.Options{Blobs: bl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h, err := ingest.New(ingest.Options{Store: st, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	e := &env{store: st, url: hs.URL, parca: profilestorev1alpha1connect.NewProfileStoreServiceClient(http.DefaultClient, hs.URL)}

	srv.StopServer()
	req, _ := http.NewRequest("POST", hs.URL+"/ingest?name=process_cpu", strings.NewReader(string(cpu("lost"))))
	req.Header.Set("Authorization", "Bearer tok-a")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != ingest.RetryAfter {
		t.Errorf("POST /ingest with the object store down: %d, Retry-After %q; want 503 and %s", resp.StatusCode, resp.Header.Get("Retry-After"), ingest.RetryAfter)
	}
	err = writeRaw(e, "tok-a", parcaReq(map[string]string{"__name__": "process_cpu"}, cpu("lost")))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Meta().Get("Retry-After") != ingest.RetryAfter {
		t.Errorf("Parca WriteRaw with the object store down: %v; want Unavailable with Retry-After", err)
	}
	q, _ := profiles.NewQuery("", t0.Add(-time.Hour), t0.Add(time.Hour))
	if series, err := st.Series(t.Context(), "proj-a", q); err != nil || len(series) != 0 {
		t.Errorf("indexed while the object store was down: %v, %v", series, err)
	}

	if err := srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if code, body := postIngest(t, e, "tok-a", "process_cpu", cpu("kept")); code != http.StatusOK {
		t.Fatalf("POST /ingest after the object store came back: %d %s", code, body)
	}
	if fns := merged(t, e, "proj-a", "process_cpu"); !fns["kept"] || fns["lost"] {
		t.Errorf("merged functions after the outage: %v", fns)
	}
}
