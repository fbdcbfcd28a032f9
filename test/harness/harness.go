package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Errors returned by the starters.
var (
	// ErrUnavailable means a part cannot run here (missing binary, not
	// root). Require turns it into a skip, or a failure when
	// FLEETPROF_REQUIRE_PRIVILEGED=1.
	ErrUnavailable = errors.New("harness: not available on this machine")
)

// Required reports whether FLEETPROF_REQUIRE_PRIVILEGED=1, under which
// unavailable parts fail tests instead of skipping them.
func Required() bool { return os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" }

// Require fails t on err, or skips it when err wraps ErrUnavailable and
// privileged parts are not required.
func Require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) && !Required() {
		t.Skip(err)
	}
	t.Fatal(err)
}

// RepoRoot returns FLEETPROF_ROOT, or the nearest directory above the
// working directory that holds the main go.mod.
func RepoRoot() (string, error) {
	if r := os.Getenv("FLEETPROF_ROOT"); r != "" {
		return r, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && isMainModule(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of github.com/fleetprof/fleetprof above the working directory: %w", ErrUnavailable)
		}
		dir = parent
	}
}

func isMainModule(gomod []byte) bool {
	return strings.Contains("\n"+string(gomod), "\nmodule github.com/fleetprof/fleetprof\n")
}

// BinDir returns FLEETPROF_BIN, or test/.bin under the repository root.
func BinDir() (string, error) {
	if b := os.Getenv("FLEETPROF_BIN"); b != "" {
		return b, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "test", ".bin"), nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen on loopback: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
