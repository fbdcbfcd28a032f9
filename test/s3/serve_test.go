package s3_test

import (
	"bytes"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/test/fleettest"
	"github.com/fleetprof/fleetprof/test/s3"
)

// TestServeWithS3 runs `fleetprof serve --profiles-s3-...` against a real
// versitygw: an uploaded profile lands as an object under the prefix and
// is queried back; with the object store down the upload gets 503 and
// Retry-After, and once it is back uploads succeed again. A serve whose
// bucket does not exist refuses to start, saying why.
func TestServeWithS3(t *testing.T) {
	srv := s3.New(t)
	bucket := srv.Bucket(t)
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	f := fleettest.StartFleetEnv(t, creds, "--profiles-s3-endpoint", srv.Endpoint, "--profiles-s3-bucket", bucket,
		"--profiles-s3-prefix", "replica-a", "--profiles-s3-insecure")
	project := f.MustCLI("project", "create", "s3")
	write := f.MustCLI("token", "create", "--project", project, "--name", "w", "--scope", "write-profiles")
	upload := func(fn string) *http.Response {
		t.Helper()
		at := time.Now().Add(-time.Minute)
		data := profilestest.Gzipped(profilestest.CPU(at, 10*time.Second, [][]string{{fn, "main"}}, []int64{5}))
		req, _ := http.NewRequest("POST", f.URL+"/ingest?name=process_cpu%7Bnode%3D%22n1%22%7D", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+write)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
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
	query := func() (string, error) {
		return f.CLI("profiles", "query", "--project", project, "--query", `{node="n1"}`,
			"--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "-o", "top")
	}
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
