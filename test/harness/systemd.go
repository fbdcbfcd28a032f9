package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Systemd is /lib/systemd/systemd running as PID 1 of its own PID and mount
// namespaces, with private tmpfs on /tmp, /run and /var/tmp. It shares the
// host's cgroup hierarchy: its units' cgroups are real host cgroups.
type Systemd struct {
	// PID is systemd's pid as seen from the host.
	PID int
	// Address is the D-Bus address of its system bus.
	Address string
	// Cgroup is systemd's root cgroup ("/fleetprof-systemd-<hex>"): a unit's
	// ControlGroup is below it, e.g. Cgroup+"/system.slice/x.service".
	Cgroup string

	cmd     *exec.Cmd
	before  map[string]bool // top-level cgroups that existed before it started
	stopped sync.Once
}

// cgroupRoots are where the hierarchies systemd writes to are mounted here
// (v2 alone, or hybrid v1 name=systemd + v2).
var cgroupRoots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"}

// StartSystemd starts systemd for one test and stops it at its end.
func StartSystemd(t testing.TB) *Systemd {
	t.Helper()
	s, err := NewSystemd(t.Context())
	Require(t, err)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// NewSystemd boots systemd (basic.target) and waits until its bus answers.
// ctx bounds the start only. It needs root.
func NewSystemd(ctx context.Context) (*Systemd, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("systemd needs root: %w", ErrUnavailable)
	}
	for _, p := range []string{"/lib/systemd/systemd", "/usr/bin/systemd-run", "/usr/bin/nsenter", "/usr/bin/unshare"} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s (apt-get install systemd dbus): %w", p, ErrUnavailable)
		}
	}
	s := &Systemd{before: topCgroups()}
	// Its own cgroup in every hierarchy it writes to, so that several test
	// systemds (one per test package, run in parallel) keep apart.
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	s.Cgroup = "/fleetprof-systemd-" + hex.EncodeToString(rnd[:])
	moveIn := ""
	for _, root := range hierarchyRoots() {
		if err := os.Mkdir(filepath.Join(root, s.Cgroup), 0o755); err != nil {
			return nil, fmt.Errorf("make cgroup for systemd: %w: %w", ErrUnavailable, err)
		}
		moveIn += "echo $$ > " + filepath.Join(root, s.Cgroup, "cgroup.procs") + " && "
	}
	// The tmpfs mounts come first: systemd's boot-time clean-up would
	// otherwise empty the host's /tmp.
	s.cmd = exec.Command("unshare", "--fork", "--pid", "--mount", "--mount-proc", "--propagation", "private",
		"sh", "-c", moveIn+"mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/tmp && exec /lib/systemd/systemd --system --unit=basic.target")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start unshare: %w", err)
	}
	if err := s.wait(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// wait finds systemd's pid and waits for its bus and for basic.target.
func (s *Systemd) wait(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if s.PID == 0 {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.cmd.Process.Pid, s.cmd.Process.Pid)); err == nil {
				if f := strings.Fields(string(b)); len(f) > 0 {
					if pid, err := strconv.Atoi(f[0]); err == nil {
						if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
							s.PID = pid
							s.Address = fmt.Sprintf("unix:path=/proc/%d/root/run/dbus/system_bus_socket", pid)
						}
					}
				}
			}
		}
		if s.PID != 0 {
			out, err := s.Exec(ctx, "systemctl", "is-active", "basic.target", "dbus.socket")
			if err == nil && strings.Count(out, "active") == 2 && !strings.Contains(out, "inactive") {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/run/dbus/system_bus_socket", s.PID)); err == nil {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for systemd: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("systemd (pid %d) not up after 60s", s.PID)
}

// Exec runs a command inside systemd's mount and PID namespaces and returns
// its combined output.
func (s *Systemd) Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(s.PID), "-m", "-p", "--", name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// RunUnit starts cmd as the transient service or scope unit name (a name
// ending in ".scope" makes a scope, whose systemd-run client stays in the
// background until the unit stops).
func (s *Systemd) RunUnit(ctx context.Context, name string, cmd ...string) error {
	if strings.HasSuffix(name, ".scope") {
		c := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(s.PID), "-m", "-p", "--", "systemd-run", "--scope", "--unit=" + name, "--"}, cmd...)...)
		if err := c.Start(); err != nil {
			return fmt.Errorf("start scope %s: %w", name, err)
		}
		go func() { _ = c.Wait() }()
		// Wait until the scope is active.
		for i := 0; i < 100; i++ {
			if out, err := s.Exec(ctx, "systemctl", "is-active", name); err == nil && strings.TrimSpace(out) == "active" {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		return fmt.Errorf("scope %s not active", name)
	}
	_, err := s.Exec(ctx, "systemd-run", append([]string{"--unit=" + name, "--collect", "--"}, cmd...)...)
	return err
}

// StopUnit stops a unit and waits for it.
func (s *Systemd) StopUnit(ctx context.Context, name string) error {
	_, err := s.Exec(ctx, "systemctl", "stop", name)
	return err
}

// MainPID returns the main pid (host pid namespace) of a service; for a
// scope it returns the first pid of its cgroup.
func (s *Systemd) MainPID(ctx context.Context, name string) (int, error) {
	out, err := s.Exec(ctx, "systemctl", "show", "-P", "ControlGroup", name)
	if err != nil {
		return 0, err
	}
	cg := strings.TrimSpace(out)
	if cg == "" {
		return 0, fmt.Errorf("unit %s has no cgroup", name)
	}
	for _, root := range cgroupRoots {
		b, err := os.ReadFile(filepath.Join(root, cg, "cgroup.procs"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			return strconv.Atoi(f[0])
		}
	}
	return 0, fmt.Errorf("no process in cgroup %s of %s", cg, name)
}

// hierarchyRoots are the cgroup hierarchies systemd creates cgroups in.
func hierarchyRoots() []string {
	var out []string
	for _, root := range cgroupRoots {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err == nil {
			out = append(out, root)
		}
	}
	return out
}

// topCgroups lists the cgroups directly under each hierarchy root, and on a
// hybrid host the directories of the /sys/fs/cgroup tmpfs.
func topCgroups() map[string]bool {
	m := map[string]bool{}
	for _, root := range append(hierarchyRoots(), "/sys/fs/cgroup") {
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if e.IsDir() {
				m[filepath.Join(root, e.Name())] = true
			}
		}
	}
	return m
}

// Close kills systemd (and with it its PID namespace) and removes the
// cgroups it created that are now empty.
func (s *Systemd) Close() error {
	var errs []error
	s.stopped.Do(func() {
		if s.PID != 0 {
			_ = syscall.Kill(s.PID, syscall.SIGKILL)
		}
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		// Processes of the namespace die asynchronously.
		deadline := time.Now().Add(10 * time.Second)
		for {
			left := s.leftovers()
			for _, d := range left {
				_ = os.Remove(d)
			}
			left = s.leftovers()
			if len(left) == 0 || time.Now().After(deadline) && !slices.ContainsFunc(left, isCgroup) {
				return
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("cgroups left after systemd stopped: %v", left))
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return errors.Join(errs...)
}

// isCgroup reports whether dir is a cgroup (not a plain tmpfs directory).
func isCgroup(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.procs"))
	return err == nil
}

// leftovers lists, deepest first, the cgroup dirs under the top-level
// cgroups that systemd created.
func (s *Systemd) leftovers() []string {
	var dirs []string
	for top := range topCgroups() {
		if s.before[top] {
			continue
		}
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}
