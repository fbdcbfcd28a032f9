package cgroup

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	id1 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uid = "5c2a8e3f-0b1d-4f6e-9a7c-1d2e3f4a5b6c"
)

var uidU = strings.ReplaceAll(uid, "-", "_")

func TestContainerID(t *testing.T) {
	tests := []struct {
		name, path string
		want       Container
		ok         bool
	}{
		// cgroup v2, systemd driver.
		{"v2 systemd containerd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id1 + ".scope", Container{RuntimeContainerd, id1}, true},
		{"v2 systemd cri-o", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id1 + ".scope", Container{RuntimeCRIO, id1}, true},
		{"v2 systemd cri-o container subcgroup", "/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + id1 + ".scope/container", Container{RuntimeCRIO, id1}, true},
		{"v2 systemd docker", "/kubepods.slice/kubepods-pod" + uidU + ".slice/docker-" + id1 + ".scope", Container{RuntimeDocker, id1}, true},
		{"v2 plain docker scope", "/system.slice/docker-" + id1 + ".scope", Container{RuntimeDocker, id1}, true},
		{"v2 cri-dockerd", "/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-dockerd-" + id1 + ".scope", Container{RuntimeDocker, id1}, true},
		// cgroup v2, cgroupfs driver.
		{"v2 cgroupfs containerd", "/kubepods/burstable/pod" + uid + "/" + id1, Container{"", id1}, true},
		{"v2 cgroupfs cri-o", "/kubepods/pod" + uid + "/crio-" + id1, Container{RuntimeCRIO, id1}, true},
		{"v2 cgroupfs docker", "/docker/" + id1, Container{RuntimeDocker, id1}, true},
		// cgroup v1 (same paths, under a controller hierarchy; nested runtimes).
		{"v1 systemd containerd in docker-in-docker", "/docker/" + id1 + "/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + strings.Repeat("b", 64) + ".scope", Container{RuntimeContainerd, strings.Repeat("b", 64)}, true},
		{"v1 cgroupfs besteffort", "/kubepods/besteffort/pod" + uid + "/" + id1, Container{"", id1}, true},
		// Not containers.
		{"conmon", "/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-conmon-" + id1 + ".scope", Container{}, false},
		{"pod slice only", "/kubepods.slice/kubepods-pod" + uidU + ".slice", Container{}, false},
		{"service", "/system.slice/nginx.service", Container{}, false},
		{"short id", "/system.slice/docker-abc.scope", Container{}, false},
		{"upper hex", "/docker/" + strings.ToUpper(id1), Container{}, false},
		{"root", "/", Container{}, false},
		{"empty", "", Container{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ContainerID(tt.path)
			if ok != tt.ok || got != tt.want {
				t.Errorf("ContainerID(%q) = %+v, %v; want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestPodUID(t *testing.T) {
	tests := []struct {
		path, want string
		ok         bool
	}{
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id1 + ".scope", uid, true},
		{"/kubepods.slice/kubepods-pod" + uidU + ".slice", uid, true},
		{"/kubepods/burstable/pod" + uid + "/" + id1, uid, true},
		{"/kubepods/pod" + uid, uid, true},
		{"/kubepods.slice/kubepods-burstable.slice", "", false},
		{"/system.slice/podman.service", "", false},
	}
	for _, tt := range tests {
		got, ok := PodUID(tt.path)
		if ok != tt.ok || got != tt.want {
			t.Errorf("PodUID(%q) = %q, %v; want %q, %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

func TestUnit(t *testing.T) {
	tests := []struct {
		path, want string
		ok         bool
	}{
		{"/system.slice/nginx.service", "nginx.service", true},
		{"/system.slice/docker-" + id1 + ".scope", "docker-" + id1 + ".scope", true},
		{"/system.slice/foo.service/child", "foo.service", true},
		{"/user.slice/user-0.slice/session-3.scope", "session-3.scope", true},
		{"/user.slice", "", false},
		{"/", "", false},
	}
	for _, tt := range tests {
		got, ok := Unit(tt.path)
		if ok != tt.ok || got != tt.want {
			t.Errorf("Unit(%q) = %q, %v; want %q, %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	hybrid := "9:name=systemd:/system.slice/x.service\n4:memory:/process_api/5b91\n1:cpu,cpuacct:/\n0::/system.slice/x.service\n"
	got, err := ParseProcCgroup([]byte(hybrid))
	if err != nil {
		t.Fatal(err)
	}
	want := []Line{
		{9, []string{"name=systemd"}, "/system.slice/x.service"},
		{4, []string{"memory"}, "/process_api/5b91"},
		{1, []string{"cpu", "cpuacct"}, "/"},
		{0, nil, "/system.slice/x.service"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("hybrid (-want +got):\n%s", d)
	}
	v2, err := ParseProcCgroup([]byte("0::/kubepods.slice/a:b\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]Line{{0, nil, "/kubepods.slice/a:b"}}, v2); d != "" {
		t.Errorf("v2 path with colon (-want +got):\n%s", d)
	}
	for _, bad := range []string{"x::/", "0:/", "0::relative", "-1::/"} {
		if _, err := ParseProcCgroup([]byte(bad)); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseProcCgroup(%q) = %v, want ErrSyntax", bad, err)
		}
	}
}

func TestParseMountInfo(t *testing.T) {
	in := `23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:38 /kubepods /host\040cg rw shared:5 - cgroup2 cgroup2 rw
`
	got, err := ParseMountInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{"/sys/fs/cgroup/cpu", "/", 1, []string{"cpu"}},
		{"/sys/fs/cgroup/systemd", "/", 1, []string{"name=systemd"}},
		{"/sys/fs/cgroup/unified", "/", 2, nil},
		{"/host cg", "/kubepods", 2, nil},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if _, err := ParseMountInfo([]byte("garbage\n")); !errors.Is(err, ErrSyntax) {
		t.Errorf("garbage: %v, want ErrSyntax", err)
	}
}

func FuzzContainerID(f *testing.F) {
	f.Add("/kubepods/burstable/pod" + uid + "/" + id1)
	f.Add("/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + id1 + ".scope")
	f.Fuzz(func(t *testing.T, path string) {
		c, ok := ContainerID(path)
		if ok && (!isID(c.ID) || !strings.Contains(path, c.ID)) {
			t.Errorf("ContainerID(%q) = %+v", path, c)
		}
		PodUID(path)
		Unit(path)
		lines, err := ParseProcCgroup([]byte(path))
		if err == nil {
			for _, l := range lines {
				if !strings.HasPrefix(l.Path, "/") {
					t.Errorf("path %q", l.Path)
				}
			}
		}
		_, _ = ParseMountInfo([]byte(path))
	})
}
