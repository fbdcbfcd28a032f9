package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CgroupV2Root returns where the cgroup v2 hierarchy is mounted
// ("/sys/fs/cgroup/unified" on hybrid hosts, "/sys/fs/cgroup" on pure v2).
func CgroupV2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") && f[3] == "/" {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy mounted: %w", ErrUnavailable)
}

// ContainerdCgroup is the cgroup path (relative to the hierarchy root) that
// containerd with the systemd cgroup driver gives a container of a
// burstable pod.
func ContainerdCgroup(podUID, containerID string) string {
	return "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(podUID, "-", "_") +
		".slice/cri-containerd-" + containerID + ".scope"
}

// CRIOCgroup is the cgroup path CRI-O (systemd driver) gives a container of
// a best-effort pod.
func CRIOCgroup(podUID, containerID string) string {
	return "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(podUID, "-", "_") +
		".slice/crio-" + containerID + ".scope"
}

// StartInCgroup creates the v2 cgroup prefix+rel (prefix keeps tests apart,
// e.g. "/fleetprof-test-<rand>"), starts cmd and moves it in. At the end of
// the test the process is killed and the cgroups it created are removed.
// It returns the pid.
func StartInCgroup(t testing.TB, prefix, rel string, cmd ...string) int {
	t.Helper()
	root, err := CgroupV2Root()
	Require(t, err)
	dir := filepath.Join(root, prefix, rel)
	var made []string
	for p := dir; p != root; p = filepath.Dir(p) {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			made = append(made, p)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		Require(t, fmt.Errorf("make cgroup %s: %w: %w", dir, ErrUnavailable, err))
	}
	c := exec.Command(cmd[0], cmd[1:]...)
	if err := c.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd, err)
	}
	t.Cleanup(func() {
		_ = c.Process.Kill()
		_ = c.Wait()
		for _, d := range made {
			for range 50 {
				if err := os.Remove(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(c.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move pid %d into %s: %v", c.Process.Pid, dir, err)
	}
	return c.Process.Pid
}

// RunningPod creates pod (which must set Spec.NodeName) and, playing the
// kubelet, writes a Running status whose containerStatuses carry the given
// container ids ("containerd://<id>") by container name.
func (k *Kube) RunningPod(ctx context.Context, pod *corev1.Pod, containerIDs map[string]string) (*corev1.Pod, error) {
	p, err := k.Clientset.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	p.Status.Phase = corev1.PodRunning
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ContainerID: containerIDs[c.Name], Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		})
	}
	p, err = k.Clientset.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return p, nil
}

// Namespace creates a namespace.
func (k *Kube) Namespace(ctx context.Context, name string) error {
	_, err := k.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}
