package s3_test

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/test/fleettest"
	"github.com/fleetprof/fleetprof/test/pg"
	"github.com/fleetprof/fleetprof/test/s3"
)

// TestServeWithS3 runs `fleetprof serve --profiles-s3-...` against a real
// versitygw: an uploaded profile lands as an object under the prefix and
// is queried back; with the object store down the upload gets 503 and
// Retry-After, and once it is back uploads succeed again. A serve whose
// bucket does not exist refuses to start, saying why.
// uploadCPU posts a one-stack CPU profile of a minute ago to f's /ingest
// with a write-profiles token.
func uploadCPU(t *testing.T, f *fleettest.Fleet, token, fn string) *http.Response {
	t.Helper()
	at := time.Now().Add(-time.Minute)
	data := profilestest.Gzipped(profilestest.CPU(at, 10*time.Second, [][]string{{fn, "main"}}, []int64{5}))
	req, _ := http.NewRequest("POST", f.URL+"/ingest?name=process_cpu%7Bnode%3D%22n1%22%7D", bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func queryTop(f *fleettest.Fleet, project string) (string, error) {
	return f.CLI("profiles", "query", "--project", project, "--query", `{node="n1"}`,
		"--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "-o", "top")
}

// TestReplicasShareProfiles runs two `fleetprof serve --store postgres`
// replicas on one PostgreSQL and one bucket (same prefix): a profile
// uploaded to one is queried from the other.
func TestReplicasShareProfiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pgs, err := pg.Start(ctx)
	if err != nil {
		if !pg.Required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(pgs.Stop)
	dsn, err := pgs.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv := s3.New(t)
	bucket := srv.Bucket(t)
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	flags := []string{"--store", "postgres", "--postgres-dsn", dsn, "--profiles-s3-endpoint", srv.Endpoint,
		"--profiles-s3-bucket", bucket, "--profiles-s3-prefix", "fleet", "--profiles-s3-insecure"}
	a := fleettest.StartFleetEnv(t, creds, flags...)
	b := fleettest.StartFleetEnv(t, creds, flags...)
	project := a.MustCLI("project", "create", "shared")
	write := a.MustCLI("token", "create", "--project", project, "--name", "w", "--scope", "write-profiles")
	if resp := uploadCPU(t, a, write, "uploaded_to_a"); resp.StatusCode != http.StatusOK {
		t.Fatalf("upload to a: %d", resp.StatusCode)
	}
	if resp := uploadCPU(t, b, write, "uploaded_to_b"); resp.StatusCode != http.StatusOK {
		t.Fatalf("upload to b: %d", resp.StatusCode)
	}
	for _, f := range []*fleettest.Fleet{a, b} {
		out, err := queryTop(f, project)
		if err != nil || !strings.Contains(out, "uploaded_to_a") || !strings.Contains(out, "uploaded_to_b") {
			t.Errorf("query on %s: %v\n%s", f.Addr, err, out)
		}
	}
}

func TestServeWithS3(t *testing.T) {
	srv := s3.New(t)
	bucket := srv.Bucket(t)
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	f := fleettest.StartFleetEnv(t, creds, "--profiles-s3-endpoint", srv.Endpoint, "--profiles-s3-bucket", bucket,
		"--profiles-s3-prefix", "replica-a", "--profiles-s3-insecure")
	project := f.MustCLI("project", "create", "s3")
	write := f.MustCLI("token", "create", "--project", project, "--name", "w", "--scope", "write-profiles")
	upload := func(fn string) *http.Response { t.Helper(); return uploadCPU(t, f, write, fn) }
	if resp := upload("stored_in_s3"); resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for o := range c.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Prefix: "replica-a/projects/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	if len(keys) != 1 || !strings.HasPrefix(keys[0], "replica-a/projects/"+project+"/"+time.Now().UTC().Add(-time.Minute).Format("2006/01/02/")) || !strings.HasSuffix(keys[0], ".pb.gz") {
		t.Errorf("objects in the bucket: %v; want one at replica-a/projects/%s/<yyyy>/<mm>/<dd>/<hh>/<id>.pb.gz", keys, project)
	}
	query := func() (string, error) { return queryTop(f, project) }
	if out, err := query(); err != nil || !strings.Contains(out, "stored_in_s3") {
		t.Fatalf("query: %v\n%s", err, out)
	}

	srv.StopServer()
	resp := upload("lost")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("upload with the object store down: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if err := srv.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if resp := upload("after_outage"); resp.StatusCode != http.StatusOK {
		t.Fatalf("upload after the object store came back: %d", resp.StatusCode)
	}
	out, err := query()
	if err != nil || !strings.Contains(out, "stored_in_s3") || !strings.Contains(out, "after_outage") || strings.Contains(out, "lost") {
		t.Errorf("query after the outage: %v\n%s", err, out)
	}

	// A missing bucket stops serve at start with a clear error.
	cmd := exec.CommandContext(t.Context(), filepath.Join(fleettest.Binaries(t), "fleetprof"), "serve", "--data-dir", t.TempDir(),
		"--http-address", fleettest.FreeAddr(t), "--profiles-s3-endpoint", srv.Endpoint, "--profiles-s3-bucket", "no-such-bucket", "--profiles-s3-insecure")
	cmd.Env = append(cmd.Environ(), creds...)
	bad, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "s3 bucket no-such-bucket at "+srv.Endpoint+" does not exist") {
		t.Errorf("serve with a missing bucket: %v\n%s", err, bad)
	}
}
