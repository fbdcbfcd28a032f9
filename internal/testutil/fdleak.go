package testutil

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// MainFDLeakCheck runs the tests of a package and fails the run when file
// descriptors opened during the tests are still open at the end. Use it as
//
//	func TestMain(m *testing.M) { testutil.MainFDLeakCheck(m) }
func MainFDLeakCheck(m *testing.M) {
	// Start the runtime's poller first so its epoll and eventfd are part
	// of the baseline rather than reported as leaks.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before, err := OpenFDs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "list open fds: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		// Closing is synchronous, but give finalizers of dropped files a
		// moment so a genuine leak is told apart from a lazy close.
		var leaked []string
		for range 20 {
			leaked, err = leakedFDs(before)
			if err != nil || len(leaked) == 0 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "list open fds: %v\n", err)
			code = 1
		} else if len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: %d file descriptors leaked by the tests:\n", len(leaked))
			for _, l := range leaked {
				fmt.Fprintf(os.Stderr, "  %s\n", l)
			}
			code = 1
		}
	}
	os.Exit(code)
}

// OpenFDs returns this process's open file descriptors with what each
// points to (from /proc/self/fd).
func OpenFDs() (map[int]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/fd: %w", err)
	}
	fds := make(map[int]string, len(ents))
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the fd used by ReadDir itself, closed by now
		}
		fds[fd] = target
	}
	return fds, nil
}

func leakedFDs(before map[int]string) ([]string, error) {
	now, err := OpenFDs()
	if err != nil {
		return nil, err
	}
	var leaked []string
	for fd, target := range now {
		if old, ok := before[fd]; ok && old == target {
			continue
		}
		leaked = append(leaked, fmt.Sprintf("fd %d -> %s", fd, target))
	}
	slices.Sort(leaked)
	return leaked, nil
}
