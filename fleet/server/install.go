package server

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/deploy/systemd"
)

// InstallOptions configures the routes a new host installs the agent from.
type InstallOptions struct {
	// FleetURL is written into install.sh as its default --fleet-address.
	FleetURL string
	// AgentBinary is the fleetprof-agent file served at
	// /download/fleetprof-agent; "" means the file fleetprof-agent beside
	// the running fleetprof binary (as `make build` lays them out in dist/).
	AgentBinary string
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
}

// RegisterInstall adds GET /install.sh and GET /download/fleetprof-agent
// (HEAD too) to mux: the console's install command is
// `curl -fsSL FLEET/install.sh | sudo sh -s -- --fleet-address FLEET --bootstrap-token T`.
func RegisterInstall(mux *http.ServeMux, o InstallOptions) {
	mux.Handle("GET /install.sh", InstallHandler(o.FleetURL))
	mux.Handle("GET /download/fleetprof-agent", AgentDownloadHandler(o.AgentBinary, o.Logger))
}

// safeURL is what may stand between single quotes in the served script.
var safeURL = regexp.MustCompile(`^https?://[A-Za-z0-9.:\[\]_%@/~+=&?-]+$`)

// InstallHandler serves deploy/systemd/install.sh with fleetURL as the
// default fleet address (left empty when fleetURL is not a plain URL).
func InstallHandler(fleetURL string) http.Handler {
	script := systemd.InstallScript
	if safeURL.MatchString(fleetURL) {
		script = bytes.Replace(script, []byte("\ndefault_fleet_address=\"\"\n"),
			[]byte("\ndefault_fleet_address='"+fleetURL+"'\n"), 1)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/x-shellscript; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "install.sh", startTime, bytes.NewReader(script))
	})
}

// startTime stands in for the embedded script's modification time.
var startTime = time.Now()

// AgentDownloadHandler serves the agent binary at path ("" means
// fleetprof-agent beside this executable), read anew on each request so
// that replacing the file upgrades what new hosts get.
func AgentDownloadHandler(path string, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	if path == "" {
		if exe, err := os.Executable(); err == nil {
			path = filepath.Join(filepath.Dir(exe), "fleetprof-agent")
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			log.Debug("agent binary not available", zap.String("path", path), zap.Error(err))
			http.Error(w, "this fleet has no agent binary to serve: start it with --agent-binary FILE, "+
				"or put fleetprof-agent beside the fleetprof binary (install.sh --binary FILE works without)", http.StatusNotFound)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			http.Error(w, "agent binary is not a regular file", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="fleetprof-agent"`)
		http.ServeContent(w, r, "fleetprof-agent", st.ModTime(), f)
	})
}
