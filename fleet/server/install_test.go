package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestInstallRoutes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(bin, []byte("\x7fELF agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, fleetURL, wantLine string
	}{
		{"fleet URL filled in", "https://fleet.example:8443", "\ndefault_fleet_address='https://fleet.example:8443'\n"},
		{"unsafe URL left out", "https://x'; rm -rf /; '", "\ndefault_fleet_address=\"\"\n"},
		{"no URL", "", "\ndefault_fleet_address=\"\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			RegisterInstall(mux, InstallOptions{FleetURL: tc.fleetURL, AgentBinary: bin})
			code, body := get(t, mux, http.MethodGet, "/install.sh")
			if code != 200 || !strings.HasPrefix(body, "#!/bin/sh\n") || !strings.Contains(body, tc.wantLine) {
				t.Errorf("GET /install.sh: %d, want 200 with %q", code, tc.wantLine)
			}
			if strings.Contains(body, "rm -rf /;") {
				t.Error("an unsafe URL made it into the script")
			}
			if code, _ := get(t, mux, http.MethodHead, "/install.sh"); code != 200 {
				t.Errorf("HEAD /install.sh: %d (the console probes it)", code)
			}
			if code, body := get(t, mux, http.MethodGet, "/download/fleetprof-agent"); code != 200 || body != "\x7fELF agent" {
				t.Errorf("GET /download/fleetprof-agent: %d %q", code, body)
			}
		})
	}
	mux := http.NewServeMux()
	RegisterInstall(mux, InstallOptions{AgentBinary: filepath.Join(t.TempDir(), "missing")})
	if code, body := get(t, mux, http.MethodGet, "/download/fleetprof-agent"); code != 404 || !strings.Contains(body, "--agent-binary") {
		t.Errorf("missing agent binary: %d %q, want 404 naming --agent-binary", code, body)
	}
}
