package sampler

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	fptestutil "github.com/fleetprof/fleetprof/internal/testutil"
)

// symbols maps the function names of a non-PIE binary to their address
// ranges (the addresses the sampler reports, with no load bias).
type symbols map[string][2]uint64

func (s symbols) in(name string, addr uint64) bool {
	r, ok := s[name]
	return ok && addr >= r[0] && addr < r[1]
}

// fn returns the function holding addr, or "".
func (s symbols) fn(addr uint64) string {
	for name, r := range s {
		if addr >= r[0] && addr < r[1] {
			return name
		}
	}
	return ""
}

// buildNoPIE compiles test/workload/cpu.c with frame pointers and without
// PIE into a temp dir and reads its function symbols. With clang: gcc 12
// leaves leaf functions without a frame record even with
// -fno-omit-frame-pointer, so a walk skips their caller, and the chains
// checked here would not be whole.
func buildNoPIE(t *testing.T) (string, symbols) {
	t.Helper()
	root := repoRoot(t)
	bin := filepath.Join(t.TempDir(), "cpuwork")
	c := exec.CommandContext(t.Context(), "clang", "-O1", "-fno-omit-frame-pointer", "-no-pie", "-o", bin, filepath.Join(root, "test/workload/cpu.c"))
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", c, err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	s := symbols{}
	for _, sym := range syms {
		if elf.ST_TYPE(sym.Info) == elf.STT_FUNC && sym.Size > 0 && sym.Value > 0 {
			s[sym.Name] = [2]uint64{sym.Value, sym.Value + sym.Size}
		}
	}
	for _, name := range []string{"main", "burn_alpha", "burn_beta", "burn_deep", "recurse", "burn_fp", "cycle_mark", "syscall_loop"} {
		if _, ok := s[name]; !ok {
			t.Fatalf("symbol %s not in %s", name, bin)
		}
	}
	return bin, s
}

func repoRoot(t *testing.T) string {
	t.Helper()
	if r := os.Getenv("FLEETPROF_ROOT"); r != "" {
		return r
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// startWorkload starts bin with args; the process is killed at cleanup.
func startWorkload(t *testing.T, bin string, args ...string) uint32 {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return uint32(cmd.Process.Pid)
}

// kernelFaultCounter counts the exceptions:page_fault_kernel tracepoint
// while pid runs: the kernel faulting on a user address, which is what a
// frame-pointer walk reading past the end of a stack costs (the probe is
// run in the context of the interrupted task, so its faults count there).
type kernelFaultCounter struct{ fd int }

func openKernelFaultCounter(t *testing.T, pid uint32) *kernelFaultCounter {
	t.Helper()
	id, err := tracepointID("exceptions/page_fault_kernel")
	if err != nil {
		t.Fatalf("tracepoint exceptions:page_fault_kernel: %v", err)
	}
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_TRACEPOINT,
		Config: id,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
	}
	fd, err := unix.PerfEventOpen(&attr, int(pid), -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		t.Fatalf("open page fault counter on pid %d: %v", pid, err)
	}
	c := &kernelFaultCounter{fd: fd}
	t.Cleanup(func() { unix.Close(fd) })
	return c
}

func (c *kernelFaultCounter) read(t *testing.T) uint64 {
	t.Helper()
	var b [8]byte
	if _, err := unix.Read(c.fd, b[:]); err != nil {
		t.Fatalf("read page fault counter: %v", err)
	}
	return binary.NativeEndian.Uint64(b[:])
}

// tracepointID reads the id of a tracepoint, mounting tracefs when no
// tracing directory is mounted yet (fresh machines).
func tracepointID(name string) (uint64, error) {
	dirs := []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}
	read := func() (uint64, error) {
		var errs []error
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, "events", name, "id"))
			if err == nil {
				return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			}
			errs = append(errs, err)
		}
		return 0, errors.Join(errs...)
	}
	if id, err := read(); err == nil {
		return id, nil
	}
	if err := unix.Mount("nodev", dirs[0], "tracefs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return 0, fmt.Errorf("mount tracefs on %s: %w", dirs[0], err)
	}
	return read()
}

// TestUserStackUnwinding runs the C workload in shapes a frame-pointer
// walker must get right and checks the frames of one window against the
// binary's symbols: full chains in caller order (burn → main; 40 frames of
// recursion; the 127-frame cap), each stop condition (frame pointer 0, odd,
// below the stack pointer, far above it, a record pointing to itself, a
// zero return address), user stacks of samples taken in kernel mode, and
// no kernel page fault taken on the workloads' behalf while sampling
// (bpf_get_stackid's user walk took one per sample).
func TestUserStackUnwinding(t *testing.T) {
	fptestutil.RequireBPF(t)
	if _, err := exec.LookPath("clang"); err != nil {
		if os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("clang not installed (test/setup.d installs it): %v", err)
		}
		t.Skip("clang not installed")
	}
	bin, syms := buildNoPIE(t)

	type want struct {
		leaf  []string                      // samples whose leaf is in one of these
		check func([]uint64) (bool, string) // must hold for ≥ 90% of them
	}
	only := func(n int) func([]uint64) (bool, string) {
		return func(u []uint64) (bool, string) {
			return len(u) == n, fmt.Sprintf("%d frames, want %d", len(u), n)
		}
	}
	chain := func(names ...string) func([]uint64) (bool, string) {
		// names: the expected functions from User[1] on; "recurse*N"
		// stands for N frames of recurse.
		var exp []string
		for _, n := range names {
			if k, ok := strings.CutPrefix(n, "recurse*"); ok {
				c, _ := strconv.Atoi(k)
				for range c {
					exp = append(exp, "recurse")
				}
				continue
			}
			exp = append(exp, n)
		}
		return func(u []uint64) (bool, string) {
			if len(u) < 1+len(exp) {
				return false, fmt.Sprintf("%d frames, want at least %d", len(u), 1+len(exp))
			}
			for i, n := range exp {
				if !syms.in(n, u[1+i]) {
					return false, fmt.Sprintf("frame %d in %q, want %s", 1+i, syms.fn(u[1+i]), n)
				}
			}
			return true, ""
		}
	}
	cases := map[string]struct {
		args []string
		want want
	}{
		"cpu": {[]string{"cpu", "30"}, want{[]string{"burn_alpha", "burn_beta"}, chain("main")}},
		"deep 40": {[]string{"deep", "30", "40"}, want{[]string{"burn_alpha"}, func(u []uint64) (bool, string) {
			if ok, why := chain("burn_deep", "recurse*40", "main")(u); !ok {
				return false, why
			}
			return len(u) < MaxStackDepth, fmt.Sprintf("%d frames: past main into libc, but not to the cap", len(u))
		}}},
		"deep 300 (cap)": {[]string{"deep", "30", "300"}, want{[]string{"burn_alpha"}, func(u []uint64) (bool, string) {
			if len(u) != MaxStackDepth {
				return false, fmt.Sprintf("%d frames, want the cap %d", len(u), MaxStackDepth)
			}
			return chain("burn_deep", fmt.Sprintf("recurse*%d", MaxStackDepth-2))(u)
		}}},
		"fp zero":     {[]string{"badfp", "30", "zero"}, want{[]string{"burn_fp"}, only(1)}},
		"fp odd":      {[]string{"badfp", "30", "odd"}, want{[]string{"burn_fp"}, only(1)}},
		"fp below sp": {[]string{"badfp", "30", "below"}, want{[]string{"burn_fp"}, only(1)}},
		"fp far":      {[]string{"badfp", "30", "far"}, want{[]string{"burn_fp"}, only(1)}},
		"fp noret":    {[]string{"badfp", "30", "noret"}, want{[]string{"burn_fp"}, only(1)}},
		"fp cycle": {[]string{"badfp", "30", "cycle"}, want{[]string{"burn_fp"}, func(u []uint64) (bool, string) {
			if len(u) != 2 || u[1] != syms["cycle_mark"][0] {
				return false, fmt.Sprintf("frames %#x, want [ip cycle_mark]", u[:min(len(u), 4)])
			}
			return true, ""
		}}},
	}
	pids := map[string]uint32{}
	for name, tc := range cases {
		pids[name] = startWorkload(t, bin, tc.args...)
	}
	sysPID := startWorkload(t, bin, "syscalls", "30")

	s, err := New(Options{FrequencyHz: 499, Window: 3 * time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	// Past the workloads' start-up (exec and the loader fault in the
	// kernel legitimately), count the kernel faults while sampling.
	time.Sleep(200 * time.Millisecond)
	faults := map[string]*kernelFaultCounter{}
	for name, pid := range pids {
		faults[name] = openKernelFaultCounter(t, pid)
	}
	var w *Window
	ctx := t.Context()
	rctx, cancel := context.WithCancel(ctx)
	if err := s.Run(rctx, func(win *Window) { w = win; cancel() }); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if w == nil {
		t.Fatal("no window")
	}

	byPID := map[uint32][]Sample{}
	for _, smp := range w.Samples {
		byPID[smp.PID] = append(byPID[smp.PID], smp)
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var all, leafN, good uint64
			why := map[string]uint64{}
			for _, smp := range byPID[pids[name]] {
				all += smp.Count
				if len(smp.User) == 0 {
					continue
				}
				inLeaf := false
				for _, l := range tc.want.leaf {
					inLeaf = inLeaf || syms.in(l, smp.User[0])
				}
				if !inLeaf {
					continue
				}
				leafN += smp.Count
				if ok, reason := tc.want.check(smp.User); ok {
					good += smp.Count
				} else {
					why[reason] += smp.Count
				}
			}
			f := faults[name].read(t)
			t.Logf("%d samples, %d with leaf in %v, %d as expected; %d kernel page faults", all, leafN, tc.want.leaf, good, f)
			if leafN < 20 || leafN < all/2 {
				t.Fatalf("%d samples with leaf in %v of %d: too few to judge", leafN, tc.want.leaf, all)
			}
			if good < leafN*9/10 {
				t.Errorf("only %d of %d samples have the expected user stack; the others: %v", good, leafN, why)
			}
			if f > all/20 {
				t.Errorf("%d kernel page faults on the workload's behalf for %d samples, want none", f, all)
			}
		})
	}

	t.Run("kernel mode", func(t *testing.T) {
		// Samples taken in a syscall walk the user stack from the
		// registers saved at kernel entry: main is on it.
		var kern, withMain uint64
		for _, smp := range byPID[sysPID] {
			if len(smp.Kernel) == 0 {
				continue
			}
			kern += smp.Count
			for _, a := range smp.User {
				if syms.in("main", a) {
					withMain += smp.Count
					break
				}
			}
		}
		t.Logf("%d samples in kernel mode, %d with main on the user stack", kern, withMain)
		if kern < 20 {
			t.Fatalf("%d kernel-mode samples of the syscall workload, want ≥ 20", kern)
		}
		if withMain < kern*9/10 {
			t.Errorf("%d of %d kernel-mode samples have main on their user stack", withMain, kern)
		}
	})
}
