package profiles_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/fleet/profiles"
	"github.com/fleetprof/fleetprof/internal/token"
)

func TestQueryAPI(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	seed(t, s)
	mux := http.NewServeMux()
	profiles.NewQueryAPI(s).Register(mux, func(r *http.Request, project string) error {
		switch r.Header.Get("Authorization") {
		case "Bearer good":
			return nil
		case "Bearer reader":
			return fmt.Errorf("token may not read profiles: %w", token.ErrScope)
		}
		return fmt.Errorf("bad token: %w", token.ErrSignature)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	from, to := t0.Add(-time.Minute).Format(time.RFC3339), fmt.Sprint(t0.Add(time.Hour).UnixMilli())
	get := func(tok, path string, params url.Values) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/projects/p1/profiles"+path+"?"+params.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	rng := url.Values{"from": {from}, "to": {to}}
	with := func(kv ...string) url.Values {
		v := url.Values{"from": {from}, "to": {to}}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	cases := []struct {
		name, tok, path string
		params          url.Values
		status          int
		contains        string
	}{
		{"types", "good", "/types", rng, 200, `"id":"process_cpu:cpu:nanoseconds:cpu:nanoseconds"`},
		{"labels", "good", "/labels", rng, 200, `{"data":["__name__","node","unit"]}`},
		{"values", "good", "/labels/unit/values", rng, 200, `{"data":["api.service","nginx.service"]}`},
		{"series", "good", "/series", with("query", `{node="a"}`), 200, `"total":210526312`},
		{"top", "good", "/merge", with("query", `{node="a"}`, "format", "top"), 200, `"name":"ngx_epoll_wait"`},
		{"flame", "good", "/merge", with("query", `{node="a"}`, "format", "flamegraph"), 200, `{"data":{"name":"total","value":`},
		{"bad selector", "good", "/merge", with("query", `{node=a}`), 400, `"code":"invalid_argument"`},
		{"bad time", "good", "/series", url.Values{"from": {"yesterday"}}, 400, `"code":"invalid_argument"`},
		{"bad format", "good", "/merge", with("format", "svg"), 400, `"code":"invalid_argument"`},
		{"nothing", "good", "/merge", with("query", `{node="zzz"}`), 404, `"code":"not_found"`},
		{"unauthenticated", "nope", "/types", rng, 401, `"code":"unauthenticated"`},
		{"forbidden", "reader", "/types", rng, 403, `"code":"permission_denied"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := get(c.tok, c.path, c.params)
			if resp.StatusCode != c.status || !strings.Contains(string(body), c.contains) {
				t.Errorf("status %d body %s; want %d containing %s", resp.StatusCode, body, c.status, c.contains)
			}
			if !json.Valid(body) {
				t.Errorf("not JSON: %s", body)
			}
		})
	}

	// format=pprof is a gzipped pprof that `go tool pprof -top` opens.
	resp, body := get("good", "/merge", with("query", `{unit="nginx.service", node="a"}`, "format", "pprof"))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("pprof: status %d type %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	f := filepath.Join(t.TempDir(), "out.pb.gz")
	if err := os.WriteFile(f, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", f).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -top: %v\n%s", err, out)
	}
	for _, fn := range []string{"ngx_epoll_wait", "ngx_http_handler"} {
		if !strings.Contains(string(out), fn) {
			t.Errorf("pprof -top output lacks %s:\n%s", fn, out)
		}
	}
}
