package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/test/fleettest"
	"github.com/fleetprof/fleetprof/test/harness"
)

// One systemd and one kube-apiserver serve every test of the package; each
// starts on first use and stops in TestMain.
var (
	sdOnce  sync.Once
	sdHost  *host
	sdErr   error
	kubeMu  sync.Once
	kube    *harness.Kube
	kubeErr error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sdHost != nil {
		if err := sdHost.sd.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if kube != nil {
		_ = kube.Close()
	}
	fleettest.RemoveBinaries()
	os.Exit(code)
}

// startKube returns the package's kube-apiserver.
func startKube(t *testing.T) *harness.Kube {
	t.Helper()
	kubeMu.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		kube, kubeErr = harness.NewKube(ctx)
	})
	harness.Require(t, kubeErr)
	return kube
}

// host is the package's systemd, with overlays on /etc, /usr/local and
// /var/lib inside its mount namespace: install.sh writes where it would on
// a real host, the host's own files stay untouched, and the upper layers
// show exactly what it left behind.
type host struct {
	sd *harness.Systemd
}

// overlays are the host paths install.sh writes to, and their layer names.
var overlays = map[string]string{"/etc": "etc", "/usr/local": "usrlocal", "/var/lib": "varlib"}

// startHost returns the package's systemd host.
func startHost(t *testing.T) *host {
	t.Helper()
	sdOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sd, err := harness.NewSystemd(ctx)
		if err != nil {
			sdErr = err
			return
		}
		sdHost = &host{sd: sd}
		var script strings.Builder
		script.WriteString("set -e\n")
		// The host runs no periodic job during the tests: a timer's job
		// writes below the overlaid paths on its own schedule (apt's
		// daily run took /var/lib/dpkg/lock mid-test and failed the
		// leftovers check, as e2scrub_all's stamp had before). Jobs
		// already queued or running are waited for, up to a minute.
		script.WriteString("systemctl stop '*.timer'\n")
		script.WriteString("for i in $(seq 600); do [ -z \"$(systemctl list-jobs --no-legend)\" ] && break; sleep 0.1; done\n")
		for dir, name := range overlays {
			fmt.Fprintf(&script, "mkdir -p /tmp/ov/%[1]s/upper /tmp/ov/%[1]s/work\n", name)
			fmt.Fprintf(&script, "mount -t overlay overlay -o lowerdir=%[2]s,upperdir=/tmp/ov/%[1]s/upper,workdir=/tmp/ov/%[1]s/work %[2]s\n", name, dir)
		}
		// Units see the overlays too once systemd rereads its unit paths.
		script.WriteString("systemctl daemon-reload\n")
		if _, err := sd.Exec(ctx, "sh", "-c", script.String()); err != nil {
			sdErr = fmt.Errorf("mount overlays in the test systemd: %w", err)
		}
	})
	harness.Require(t, sdErr)
	return sdHost
}

// sh runs a shell script inside the host's namespaces.
func (h *host) sh(t *testing.T, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	return h.sd.Exec(ctx, "sh", "-c", script)
}

// mustSh is sh that fails the test on error.
func (h *host) mustSh(t *testing.T, script string) string {
	t.Helper()
	out, err := h.sh(t, script)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// path returns a host path as the test sees it from outside the namespace.
func (h *host) path(p string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", h.sd.PID), p)
}

// layerEntry is one file in an overlay's upper layer.
type layerEntry struct {
	path string // host path, e.g. /etc/fleetprof/agent.env
	dir  bool
}

// upper lists the upper layers' contents: everything written below the
// overlaid paths since they were mounted.
func (h *host) upper(t *testing.T) map[string]layerEntry {
	t.Helper()
	out := map[string]layerEntry{}
	for dir, name := range overlays {
		root := h.path("/tmp/ov/" + name + "/upper")
		err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err != nil || p == root {
				return err
			}
			hp := filepath.Join(dir, strings.TrimPrefix(p, root))
			out[hp] = layerEntry{path: hp, dir: info.IsDir()}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// systemdOwn are paths systemd writes on its own schedule, whatever the
// test does: a persistent timer of the host (e2scrub_all) that fires
// during a test stamps its file, which once failed the leftovers check.
var systemdOwn = []string{"/var/lib/systemd/timers/", "/var/lib/systemd/random-seed"}

// leftovers lists what is in the upper layers now but was not before,
// leaving out directories that the host already had (overlayfs copies a
// parent directory up when a file is created in it) and what systemd
// writes by itself (systemdOwn).
func (h *host) leftovers(t *testing.T, before map[string]layerEntry) []string {
	t.Helper()
	var left []string
	for p, e := range h.upper(t) {
		if _, ok := before[p]; ok {
			continue
		}
		if slices.ContainsFunc(systemdOwn, func(own string) bool { return p == strings.TrimSuffix(own, "/") || strings.HasPrefix(p, own) }) {
			continue
		}
		if e.dir {
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				continue
			}
		}
		left = append(left, p)
	}
	return left
}
