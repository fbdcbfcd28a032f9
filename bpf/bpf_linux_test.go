package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSpec checks that the committed object parses and holds what
// agent/sampler expects. Loading it into the kernel is tested there.
func TestSpec(t *testing.T) {
	spec, err := LoadProfile()
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	for _, p := range []string{ProfileProgSample, ProfileProgOnExec} {
		if spec.Programs[p] == nil {
			t.Errorf("program %q missing", p)
		}
	}
	for _, m := range []string{ProfileMapCounts0, ProfileMapCounts1, ProfileMapStacks0, ProfileMapStacks1, ProfileMapUstacks0, ProfileMapUstacks1, ProfileMapScratch, ProfileMapStats, ProfileMapActiveSlot, ProfileMapKnownPids, ProfileMapNewPids} {
		if spec.Maps[m] == nil {
			t.Errorf("map %q missing", m)
		}
	}
}

// TestGeneratedUpToDate regenerates the objects with clang (when it is
// installed) and fails if the committed ones differ from what profile.c
// produces.
func TestGeneratedUpToDate(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		if os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("clang not installed (test/setup.d installs it): %v", err)
		}
		t.Skip("clang not installed")
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "go", "tool", "bpf2go", "-go-package", "bpf", "-tags", "linux", "-target", "amd64,arm64",
		"-type", "stack_key", "-type", "count_val", "-type", "user_stack", "-output-dir", dir, "Profile", "profile.c", "--", "-I./headers")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, out)
	}
	for _, name := range []string{"profile_x86_bpfel.o", "profile_arm64_bpfel.o", "profile_x86_bpfel.go", "profile_arm64_bpfel.go"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what profile.c produces: run make generate and commit", name)
		}
	}
}
