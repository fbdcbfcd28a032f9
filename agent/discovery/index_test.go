package discovery

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/internal/config"
	"github.com/fleetprof/fleetprof/internal/relabel"
)

const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeProc writes /proc/<pid>/{cgroup,comm,exe} under a temp dir.
type fakeProc struct{ root string }

func newFakeProc(t *testing.T) *fakeProc { return &fakeProc{root: t.TempDir()} }

func (f *fakeProc) add(t *testing.T, pid int, comm, exe, cgroup string) {
	t.Helper()
	dir := filepath.Join(f.root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(dir, "exe"))
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
}

func hybrid(path string) string {
	return "9:name=systemd:" + path + "\n4:memory:/\n0::" + path + "\n"
}

func compile(t *testing.T, s Selector) *Selection {
	t.Helper()
	sel, err := s.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// setup has: pid 10 in nginx.service, 11 in a containerd container (v1
// only, no known cgroup path: matched by id), 12 a host java, 13 in
// docker-<id>.scope, 14 in a child cgroup of nginx.service.
func setup(t *testing.T) (*fakeProc, []Target, []Target) {
	f := newFakeProc(t)
	f.add(t, 10, "nginx", "/usr/sbin/nginx", hybrid("/system.slice/nginx.service"))
	f.add(t, 11, "api", "/app/api", "4:memory:/kubepods/burstable/pod5c2a8e3f-0b1d-4f6e-9a7c-1d2e3f4a5b6c/"+cid+"\n0::/\n")
	f.add(t, 12, "java", "/usr/bin/java", hybrid("/user.slice/session-1.scope"))
	f.add(t, 13, "redis", "/usr/bin/redis", "0::/system.slice/docker-"+strings.Repeat("b", 64)+".scope\n")
	f.add(t, 14, "nginx", "/usr/sbin/nginx", hybrid("/system.slice/nginx.service/worker"))
	units := []Target{
		{Source: SourceSystemd, Labels: map[string]string{LabelSystemdUnit: "nginx.service"}, Cgroups: []string{"/system.slice/nginx.service"}},
		{Source: SourceSystemd, Labels: map[string]string{LabelSystemdUnit: "docker-" + strings.Repeat("b", 64) + ".scope"}, Cgroups: []string{"/system.slice/docker-" + strings.Repeat("b", 64) + ".scope"}},
	}
	pods := []Target{{Source: SourceKubernetes, Labels: map[string]string{
		LabelNode: "n1", LabelNamespace: "shop", LabelPod: "api-0", LabelContainer: "api",
		MetaContainerID: "containerd://" + cid, MetaPodLabelPrefix + "app_kubernetes_io_name": "api", MetaPodLabelPrefix + "tier": "web",
	}}}
	return f, units, pods
}

func TestIndexLookup(t *testing.T) {
	f, units, pods := setup(t)
	java := map[string]string{"node": "n1", "pid": "12", "comm": "java", "exe": "/usr/bin/java"}
	nginx := map[string]string{"node": "n1", "systemd_unit": "nginx.service"}
	api := map[string]string{"node": "n1", "namespace": "shop", "pod": "api-0", "container": "api"}
	tests := []struct {
		name string
		sel  Selector
		want map[int]map[string]string
	}{
		{"whole host", Selector{}, map[int]map[string]string{
			10: {"node": "n1", "pid": "10", "comm": "nginx", "exe": "/usr/sbin/nginx", "systemd_unit": "nginx.service"},
			11: {"node": "n1", "pid": "11", "comm": "api", "exe": "/app/api", "namespace": "shop", "pod": "api-0", "container": "api"},
			12: java,
		}},
		{"unit glob", Selector{Units: []string{"nginx.*"}}, map[int]map[string]string{10: nginx, 14: nginx}},
		{"docker scope unit", Selector{Units: []string{"docker-*.scope"}}, map[int]map[string]string{13: {"node": "n1", "systemd_unit": "docker-" + strings.Repeat("b", 64) + ".scope"}}},
		{"namespace", Selector{Namespaces: []string{"shop"}}, map[int]map[string]string{11: api}},
		{"other namespace", Selector{Namespaces: []string{"db"}}, map[int]map[string]string{}},
		{"pod selector on a dotted label", Selector{PodSelector: "app.kubernetes.io/name=api,tier in (web)"}, map[int]map[string]string{11: api}},
		{"pod selector not matching", Selector{PodSelector: "tier!=web"}, map[int]map[string]string{}},
		{"comm regex", Selector{Comm: "^ja"}, map[int]map[string]string{12: java}},
		{"exe regex and unit", Selector{Exe: "java$", Units: []string{"nginx.service"}}, map[int]map[string]string{10: nginx, 12: java, 14: nginx}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := NewIndex(IndexOptions{Node: "n1", ProcRoot: f.root, Settings: Settings{Selection: compile(t, tt.sel)}})
			ix.Update(SourceSystemd, units)
			ix.Update(SourceKubernetes, pods)
			for pid := 10; pid <= 15; pid++ {
				got, ok := ix.Lookup(uint32(pid))
				want, wantOK := tt.want[pid]
				if tt.sel.Comm == "" && tt.sel.Exe == "" && len(tt.sel.Units) == 0 && len(tt.sel.Namespaces) == 0 && tt.sel.PodSelector == "" {
					// Whole host: every live pid, 13 and 14 included.
					wantOK = pid != 15
					if want == nil && wantOK {
						got = map[string]string{"pid": got["pid"]}
						want = map[string]string{"pid": strconv.Itoa(pid)}
					}
				}
				if ok != wantOK {
					t.Errorf("Lookup(%d) ok = %v, want %v (labels %v)", pid, ok, wantOK, got)
					continue
				}
				if d := cmp.Diff(want, got); ok && d != "" {
					t.Errorf("Lookup(%d) (-want +got):\n%s", pid, d)
				}
			}
		})
	}
}

func TestIndexRelabelAndExternalLabels(t *testing.T) {
	f, units, pods := setup(t)
	rules, err := relabel.Compile([]relabel.Config{
		{SourceLabels: []string{"__meta_kubernetes_pod_label_tier"}, Regex: "(.*)", TargetLabel: "tier", Replacement: "$1", Action: relabel.Replace, Separator: ";"},
		{SourceLabels: []string{"systemd_unit"}, Regex: "nginx.service", Action: relabel.Drop, Separator: ";", Replacement: "$1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ix := NewIndex(IndexOptions{Node: "n1", ProcRoot: f.root, Settings: Settings{
		Selection:      compile(t, Selector{Namespaces: []string{"shop"}, Units: []string{"*"}}),
		Relabel:        rules,
		ExternalLabels: map[string]string{"cluster": "prod", "namespace": "not-this"},
	}})
	ix.Update(SourceSystemd, units)
	ix.Update(SourceKubernetes, pods)
	got, ok := ix.Lookup(11)
	want := map[string]string{"node": "n1", "namespace": "shop", "pod": "api-0", "container": "api", "tier": "web", "cluster": "prod"}
	if d := cmp.Diff(want, got); !ok || d != "" {
		t.Errorf("relabeled pod (ok %v) (-want +got):\n%s", ok, d)
	}
	if l, ok := ix.Lookup(10); ok {
		t.Errorf("unit dropped by relabel still a target: %v", l)
	}
	if n := len(ix.Targets()); n != 2 {
		t.Errorf("Targets() has %d entries, want 2 (pod and docker scope): %v", n, ix.Targets())
	}
}

func TestIndexCache(t *testing.T) {
	f, units, _ := setup(t)
	now := time.Unix(1000, 0)
	ix := NewIndex(IndexOptions{ProcRoot: f.root, CacheTTL: time.Minute, Now: func() time.Time { return now },
		Settings: Settings{Selection: compile(t, Selector{Units: []string{"nginx.service"}})}})
	ix.Update(SourceSystemd, units)
	if _, ok := ix.Lookup(12); ok {
		t.Fatal("java selected")
	}
	// The process moves into the unit: the cached answer holds until the TTL.
	f.add(t, 12, "java", "/usr/bin/java", hybrid("/system.slice/nginx.service"))
	if _, ok := ix.Lookup(12); ok {
		t.Error("cache not used")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := ix.Lookup(12); !ok {
		t.Error("answer not refreshed after the TTL")
	}
	// An exited pid is swept; a pid with no /proc entry is never selected.
	if err := os.RemoveAll(filepath.Join(f.root, "12")); err != nil {
		t.Fatal(err)
	}
	ix.Sweep()
	if _, ok := ix.Lookup(12); ok {
		t.Error("exited pid still selected after Sweep")
	}
	// Updates clear the cache at once.
	f.add(t, 12, "java", "/usr/bin/java", hybrid("/system.slice/nginx.service"))
	if _, ok := ix.Lookup(12); !ok {
		t.Fatal("not selected")
	}
	ix.Update(SourceSystemd, nil)
	if _, ok := ix.Lookup(12); ok {
		t.Error("unit gone but pid still selected")
	}
}

func TestSelectorErrors(t *testing.T) {
	tests := []struct {
		sel   Selector
		field string
	}{
		{Selector{PodSelector: "app in (a"}, "targets.kubernetes.pod_selector"},
		{Selector{PodSelector: "a b"}, "targets.kubernetes.pod_selector"},
		{Selector{Namespaces: []string{"ok", ""}}, "targets.kubernetes.namespaces[1]"},
		{Selector{Units: []string{"a.service", "[x"}}, "targets.systemd.units[1]"},
		{Selector{Comm: "(java"}, "targets.processes.comm"},
		{Selector{Exe: "*"}, "targets.processes.exe"},
	}
	for _, tt := range tests {
		_, err := tt.sel.Compile()
		if !errors.Is(err, ErrSelector) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("Compile(%+v) = %v, want ErrSelector naming %s", tt.sel, err, tt.field)
		}
	}
	if sel, err := (Selector{}).Compile(); sel != nil || err != nil {
		t.Errorf("zero selector = %v, %v; want nil, nil (whole host)", sel, err)
	}
}

// unitsRecorder records the globs a Manager pushes.
type unitsRecorder struct{ units []string }

func (u *unitsRecorder) SetUnits(g []string) { u.units = g }

func TestManagerApplyConfig(t *testing.T) {
	f, units, _ := setup(t)
	ix := NewIndex(IndexOptions{Node: "n1", ProcRoot: f.root})
	ix.Update(SourceSystemd, units)
	rec := &unitsRecorder{}
	m, err := NewManager(ManagerOptions{Index: ix, Static: Selector{Units: []string{"docker-*.scope"}},
		Discoverers: map[string]Discoverer{SourceSystemd: struct {
			Discoverer
			UnitSetter
		}{nil, rec}}})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"docker-*.scope"}, rec.units); d != "" || ix.WholeHost() {
		t.Errorf("static units not applied: %v, whole host %v", rec.units, ix.WholeHost())
	}
	cfg, err := config.Parse([]byte("targets:\n  systemd: {units: [nginx.service]}\nexternal_labels: {cluster: prod}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"docker-*.scope", "nginx.service"}, rec.units); d != "" {
		t.Errorf("units (-want +got):\n%s", d)
	}
	if l, ok := ix.Lookup(10); !ok || l["cluster"] != "prod" || l["systemd_unit"] != "nginx.service" {
		t.Errorf("Lookup(nginx) = %v, %v", l, ok)
	}
	bad := *cfg
	bad.Targets.Processes.Comm = "(("
	if err := m.ApplyConfig(&bad); !errors.Is(err, ErrSelector) || !strings.Contains(err.Error(), "targets.processes.comm") {
		t.Errorf("bad regex: %v", err)
	}
	if _, ok := ix.Lookup(10); !ok {
		t.Error("a rejected config changed the selection")
	}
}

func TestIndexConcurrent(t *testing.T) {
	f, units, pods := setup(t)
	ix := NewIndex(IndexOptions{Node: "n1", ProcRoot: f.root})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			ix.Update(SourceSystemd, units)
			ix.Update(SourceKubernetes, pods)
			if i%2 == 0 {
				ix.Apply(Settings{Selection: compile(t, Selector{Units: []string{"nginx.service"}})})
			} else {
				ix.Apply(Settings{})
			}
		}
	}()
	for range 2000 {
		for pid := uint32(10); pid <= 14; pid++ {
			if l, ok := ix.Lookup(pid); ok && l["node"] != "n1" {
				t.Fatalf("Lookup(%d) = %v", pid, l)
			}
		}
	}
	<-done
	ix.Apply(Settings{})
	if l, ok := ix.Lookup(10); !ok || l["systemd_unit"] != "nginx.service" || l["comm"] != "nginx" {
		t.Errorf("after the churn: Lookup(10) = %v, %v", l, ok)
	}
}

// fakeDiscoverer sends one set, then waits.
type fakeDiscoverer struct{ ts []Target }

func (f fakeDiscoverer) Run(ctx context.Context, up chan<- []Target) error {
	select {
	case up <- f.ts:
	case <-ctx.Done():
	}
	<-ctx.Done()
	return nil
}

func TestManagerRun(t *testing.T) {
	f, units, _ := setup(t)
	ix := NewIndex(IndexOptions{ProcRoot: f.root})
	m, err := NewManager(ManagerOptions{Index: ix, Static: Selector{Units: []string{"nginx.service"}},
		Discoverers: map[string]Discoverer{SourceSystemd: fakeDiscoverer{units}}, SweepInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l, ok := ix.Lookup(10); ok && l["systemd_unit"] == "nginx.service" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("discovered unit never reached the index")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	// Index.ApplyConfig: the config alone (no static units) selects nothing of these.
	cfg, err := config.Parse([]byte("targets: {processes: {comm: '^java$'}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := ix.Lookup(10); ok {
		t.Error("nginx still selected")
	}
	if l, ok := ix.Lookup(12); !ok || l["comm"] != "java" {
		t.Errorf("Lookup(java) = %v, %v", l, ok)
	}
}
