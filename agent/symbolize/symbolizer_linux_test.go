package symbolize

import (
	"bufio"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

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

type binaries struct {
	c, cNoSymtab, goStripped, goNoSection string
}

// build compiles the test workloads: C with frame pointers (and a copy
// without .symtab, so .dynsym or nothing remains), Go stripped, and a Go
// copy whose .gopclntab section name is gone (found by magic).
func build(t *testing.T) binaries {
	t.Helper()
	root := repoRoot(t)
	dir := t.TempDir()
	b := binaries{
		c:           filepath.Join(dir, "cpuwork"),
		cNoSymtab:   filepath.Join(dir, "cpuwork-stripped"),
		goStripped:  filepath.Join(dir, "gocpuwork"),
		goNoSection: filepath.Join(dir, "gocpuwork-nosection"),
	}
	cmds := [][]string{
		{"gcc", "-O1", "-fno-omit-frame-pointer", "-rdynamic", "-o", b.c, filepath.Join(root, "test/workload/cpu.c")},
		{"objcopy", "--strip-debug", "--remove-section", ".symtab", "--remove-section", ".strtab", b.c, b.cNoSymtab},
		{"go", "build", "-ldflags=-s -w", "-o", b.goStripped, "./test/workload/gocpu"},
		{"objcopy", "--rename-section", ".gopclntab=.rodata.renamed", b.goStripped, b.goNoSection},
	}
	for _, args := range cmds {
		c := exec.CommandContext(t.Context(), args[0], args[1:]...)
		c.Dir = root
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
	}
	return b
}

// symbolVaddr returns the ELF address of a function, from the unstripped
// C binary's symbols or, for Go, from a wanted offset inside the text.
func symbolVaddr(t *testing.T, path, name string) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.Symbols()
	dyn, _ := f.DynamicSymbols()
	for _, s := range append(syms, dyn...) {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("%s has no symbol %s", path, name)
	return 0
}

func TestParseObject(t *testing.T) {
	b := build(t)
	// Addresses of the Go functions, from an unstripped build.
	root := repoRoot(t)
	goFull := filepath.Join(t.TempDir(), "gofull")
	c := exec.CommandContext(t.Context(), "go", "build", "-o", goFull, "./test/workload/gocpu")
	c.Dir = root
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cAlpha := symbolVaddr(t, b.c, "burn_alpha")
	cBeta := symbolVaddr(t, b.c, "burn_beta")
	goAlpha := symbolVaddr(t, goFull, "main.burnAlpha")
	goBeta := symbolVaddr(t, goFull, "main.burnBeta")

	for _, tc := range []struct {
		name, path  string
		addrs       []uint64
		want        []string
		gnuBuildID  bool
		wantPclntab bool
	}{
		{"c symtab", b.c, []uint64{cAlpha + 4, cBeta + 4}, []string{"burn_alpha", "burn_beta"}, true, false},
		{"c dynsym only", b.cNoSymtab, []uint64{cAlpha + 4, cBeta}, []string{"burn_alpha", "burn_beta"}, true, false},
		{"go stripped", b.goStripped, []uint64{goAlpha + 4, goBeta + 1}, []string{"main.burnAlpha", "main.burnBeta"}, true, true},
		{"go pclntab by magic", b.goNoSection, []uint64{goAlpha + 4, goBeta + 1}, []string{"main.burnAlpha", "main.burnBeta"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			o, err := parseObject(data, false)
			if err != nil {
				t.Fatalf("parseObject: %v", err)
			}
			if tc.gnuBuildID && len(o.buildID) != 40 {
				t.Errorf("build id %q, want 40 hex digits", o.buildID)
			}
			if (o.pcln != nil) != tc.wantPclntab {
				t.Errorf("pclntab found = %v, want %v", o.pcln != nil, tc.wantPclntab)
			}
			for i, addr := range tc.addrs {
				if got := o.symbol(addr); got != tc.want[i] {
					t.Errorf("symbol(%#x) = %q, want %q", addr, got, tc.want[i])
				}
			}
			if got := o.symbol(1); got != "" {
				t.Errorf("symbol(1) = %q, want none", got)
			}
		})
	}
}

func TestSymbolizerLiveAndExitedProcess(t *testing.T) {
	if os.Geteuid() != 0 && os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") != "1" {
		t.Skip("reading other processes' maps needs root")
	}
	b := build(t)
	cmd := exec.Command(b.c, "cpu", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := uint32(cmd.Process.Pid)
	// Wait until the dynamic loader has mapped the binary.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if m, _ := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/maps"); strings.Contains(string(m), "libc") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	s, err := New(Options{MaxObjects: 8, MaxProcesses: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Observe(pid)
	p, err := s.Process(pid)
	if err != nil {
		t.Fatalf("Process: %v", err)
	}
	if p.Comm != "cpuwork" || filepath.Base(p.Exe) != "cpuwork" {
		t.Errorf("comm %q exe %q, want cpuwork", p.Comm, p.Exe)
	}
	addr := runtimeAddr(t, p, b.c, symbolVaddr(t, b.c, "burn_alpha")+8)
	m, name := s.Resolve(p, addr)
	if name != "burn_alpha" || m == nil || len(m.BuildID) != 40 || !strings.HasSuffix(m.Path, "cpuwork") {
		t.Errorf("Resolve = %+v, %q; want burn_alpha in cpuwork with a build id", m, name)
	}

	// Exits mid-window: the snapshot still resolves until the window ends.
	cmd.Process.Kill()
	cmd.Wait()
	p2, err := s.Process(pid)
	if err != nil || p2 != p {
		t.Fatalf("Process after exit = %v, %v; want the snapshot", p2, err)
	}
	if _, name := s.Resolve(p2, addr); name != "burn_alpha" {
		t.Errorf("Resolve after exit = %q, want burn_alpha", name)
	}
	s.EndWindow() // the window that saw it
	s.EndWindow() // a window without it: forgotten
	if _, err := s.Process(pid); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Process after two windows = %v, want ErrNoProcess", err)
	}
}

// runtimeAddr maps an ELF address of bin to its address in process p.
func runtimeAddr(t *testing.T, p *Process, bin string, vaddr uint64) uint64 {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var fileOff uint64
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_LOAD && vaddr >= prog.Vaddr && vaddr < prog.Vaddr+prog.Filesz {
			fileOff = vaddr - prog.Vaddr + prog.Off
		}
	}
	for _, m := range p.Mappings() {
		if strings.HasSuffix(m.Path, filepath.Base(bin)) && fileOff >= m.Offset && fileOff < m.Offset+(m.Limit-m.Start) {
			return m.Start + fileOff - m.Offset
		}
	}
	t.Fatalf("no mapping of %s holds file offset %#x", bin, fileOff)
	return 0
}

func TestKernelSymbols(t *testing.T) {
	if os.Geteuid() != 0 && os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") != "1" {
		t.Skip("kallsyms addresses need root")
	}
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var addr uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "do_syscall_64" {
			addr, _ = strconv.ParseUint(fields[0], 16, 64)
			break
		}
	}
	if addr == 0 {
		t.Fatal("do_syscall_64 not in /proc/kallsyms")
	}
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Kernel(addr + 3); got != "do_syscall_64" {
		t.Errorf("Kernel(do_syscall_64+3) = %q", got)
	}
}
