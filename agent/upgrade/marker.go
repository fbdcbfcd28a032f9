package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Marker states.
const (
	statePending = "pending" // swapped, the new version has not proven itself
	stateGood    = "good"    // the new version connected and is healthy
	stateFailed  = "failed"  // the previous binary was restored
)

// marker is the "pending upgrade" record in the state dir. It survives
// the restart into the new binary and is read by the guard.
type marker struct {
	State    string    `json:"state"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	SHA256   string    `json:"sha256"`
	Exe      string    `json:"exe"`
	Prev     string    `json:"prev"`
	Deadline time.Time `json:"deadline"`
	// Starts counts starts of the new binary (one per systemd invocation).
	Starts         int    `json:"starts"`
	LastInvocation string `json:"lastInvocation,omitempty"`
	Reason         string `json:"reason,omitempty"`
	// Failed remembers versions that failed (version → reason) so that
	// the same offer is answered INSTALL_FAILED instead of retried.
	Failed map[string]string `json:"failed,omitempty"`
	// AllPackagesHash of the offer, echoed in status reports.
	AllPackagesHash []byte `json:"allPackagesHash,omitempty"`
}

const markerFile = "upgrade.json"

func readMarker(dir string) (*marker, error) {
	b, err := os.ReadFile(filepath.Join(dir, markerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read upgrade marker: %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse upgrade marker %s: %w", filepath.Join(dir, markerFile), err)
	}
	return &m, nil
}

func writeMarker(dir string, m *marker) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode upgrade marker: %w", err)
	}
	return writeAtomic(filepath.Join(dir, markerFile), b, 0o600)
}

// writeAtomic writes a file by rename, so a crash leaves the old or the
// new content, never a torn one.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// copyAtomic copies src over dst by a temporary file and a rename.
func copyAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	b, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return writeAtomic(dst, b, 0o755)
}

// Guard is run at every start of the agent (by ExecStartPre with the kept
// previous binary, and again by the agent itself): while an upgrade is
// pending it counts the new binary's starts and, when it crash-loops
// (more than maxStarts starts) or its health deadline passed, it restores
// the previous binary and records why. It reports whether it restored.
// One systemd start (INVOCATION_ID) is counted once.
func Guard(stateDir string, maxStarts int, now time.Time) (bool, error) {
	m, err := readMarker(stateDir)
	if err != nil || m == nil || m.State != statePending {
		return false, err
	}
	if inv := os.Getenv("INVOCATION_ID"); inv == "" || inv != m.LastInvocation {
		m.Starts++
		m.LastInvocation = inv
	}
	var reason string
	switch {
	case m.Starts > maxStarts:
		reason = fmt.Sprintf("%s did not stay up: %d starts without connecting and reporting healthy (crash loop); %s restored", m.To, m.Starts-1, m.From)
	case now.After(m.Deadline):
		reason = fmt.Sprintf("%s did not connect and report healthy by %s; %s restored", m.To, m.Deadline.Format(time.RFC3339), m.From)
	}
	if reason == "" {
		return false, writeMarker(stateDir, m)
	}
	return true, restore(stateDir, m, reason)
}

// restore puts the previous binary back and marks the upgrade failed.
func restore(stateDir string, m *marker, reason string) error {
	if err := copyAtomic(m.Prev, m.Exe); err != nil {
		return fmt.Errorf("restore previous binary: %w", err)
	}
	m.State, m.Reason = stateFailed, reason
	if m.Failed == nil {
		m.Failed = map[string]string{}
	}
	m.Failed[m.To] = reason
	return writeMarker(stateDir, m)
}

// GuardCommand is `fleetprof-agent upgrade-guard --state-dir DIR`, for
// systemd's ExecStartPre run with the kept previous binary
// (ExecStartPre=-/usr/local/bin/fleetprof-agent.prev upgrade-guard
// --state-dir=${STATE_DIRECTORY}): it restores the previous binary when
// a new one crash-loops before it can guard itself. It never fails the
// start.
func GuardCommand(args []string, stderr io.Writer) error {
	dir, maxStarts := "/var/lib/fleetprof-agent", 3
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case strings.HasPrefix(a, "--state-dir="):
			dir = strings.TrimPrefix(a, "--state-dir=")
		case a == "--state-dir" && i+1 < len(args):
			dir = args[i+1]
			i++
		}
	}
	restored, err := Guard(dir, maxStarts, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, "fleetprof-agent upgrade-guard:", err)
		return nil
	}
	if restored {
		fmt.Fprintln(stderr, "fleetprof-agent upgrade-guard: the new version failed; previous binary restored")
	}
	return nil
}
