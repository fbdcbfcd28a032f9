package deploy

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprof/fleetprof/test/fleettest"
)

// TestImageBuildWithoutDocker: `make image` (deploy/images/build.sh) on a
// machine without a Docker engine says so, prints the exact build
// commands, and fails rather than pretending.
func TestImageBuildWithoutDocker(t *testing.T) {
	cmd := exec.Command("bash", filepath.Join(fleettest.Root(), "deploy", "images", "build.sh"))
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix:///nonexistent/docker.sock", "VERSION=v9.9.9-test", "REGISTRY=registry.example/fp")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("build.sh succeeded without a Docker engine:\n%s", out)
	}
	for _, want := range []string{
		"no Docker engine here",
		"docker build -f deploy/images/Dockerfile.fleet --build-arg VERSION=v9.9.9-test -t registry.example/fp/fleetprof:v9.9.9-test .",
		"docker build -f deploy/images/Dockerfile.agent --build-arg VERSION=v9.9.9-test -t registry.example/fp/fleetprof-agent:v9.9.9-test .",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("build.sh output lacks %q:\n%s", want, out)
		}
	}
}

// TestReleaseBuild runs the build step of both Dockerfiles (gobuild.sh):
// static binaries (no ELF interpreter, so they run on distroless/static
// and scratch) that report the release version.
func TestReleaseBuild(t *testing.T) {
	root := fleettest.Root()
	for _, f := range []string{"Dockerfile.fleet", "Dockerfile.agent"} {
		b, err := os.ReadFile(filepath.Join(root, "deploy", "images", f))
		if err != nil {
			t.Fatal(err)
		}
		df := string(b)
		for _, want := range []string{"sh deploy/images/gobuild.sh /out", "FROM gcr.io/distroless/static-debian12", "ARG VERSION"} {
			if !strings.Contains(df, want) {
				t.Errorf("%s lacks %q", f, want)
			}
		}
		if f == "Dockerfile.fleet" && (!strings.Contains(df, ":nonroot") || !strings.Contains(df, "USER 65532:65532")) {
			t.Errorf("%s: the fleet image must run as non-root", f)
		}
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "deploy/images/gobuild.sh", out)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "VERSION=v9.9.9-test")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gobuild.sh: %v\n%s", err, b)
	}
	for _, name := range []string{"fleetprof", "fleetprof-agent"} {
		bin := filepath.Join(out, name)
		v, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(v), "v9.9.9-test") {
			t.Errorf("%s --version: %v %q, want v9.9.9-test", name, err, v)
		}
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked (has an ELF interpreter)", name)
			}
		}
		f.Close()
	}
}
