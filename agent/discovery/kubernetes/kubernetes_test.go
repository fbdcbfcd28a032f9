package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fleetprof/fleetprof/agent/discovery"
	"github.com/fleetprof/fleetprof/test/harness"
)

var (
	kube    *harness.Kube
	kubeErr error
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute) // may build kube-apiserver
	kube, kubeErr = harness.NewKube(ctx)
	cancel()
	code := m.Run()
	if kube != nil {
		_ = kube.Close()
	}
	os.Exit(code)
}

func randomID(t testing.TB) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// container is a real process in a real cgroup named as a runtime would.
type container struct {
	cgroup string // relative to the hierarchy root
	pid    int
}

func startContainer(t testing.TB, prefix, rel string) *container {
	t.Helper()
	return &container{cgroup: prefix + rel, pid: harness.StartInCgroup(t, prefix, rel, "sleep", "1000")}
}

func createPod(t testing.TB, ns, name, node string, lbl map[string]string, containerID string) *corev1.Pod {
	t.Helper()
	p, err := kube.RunningPod(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbl},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "example/app:1"}}},
	}, map[string]string{"main": containerID})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// watcher runs a Discoverer and feeds an Index.
type watcher struct {
	ix      *discovery.Index
	up      chan []discovery.Target
	last    []discovery.Target
	updates int
}

// waitFor consumes updates until cond holds for the latest set.
func (w *watcher) waitFor(t *testing.T, what string, cond func([]discovery.Target) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if w.updates > 0 && cond(w.last) {
			return
		}
		select {
		case ts := <-w.up:
			w.last = ts
			w.updates++
			w.ix.Update(discovery.SourceKubernetes, ts)
		case <-deadline:
			t.Fatalf("timed out waiting for %s; last targets: %v", what, names(w.last))
		}
	}
}

func names(ts []discovery.Target) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Labels[discovery.LabelNamespace]+"/"+t.Labels[discovery.LabelPod]+"/"+t.Labels[discovery.LabelContainer])
	}
	slices.Sort(out)
	return out
}

func hasNames(want ...string) func([]discovery.Target) bool {
	slices.Sort(want)
	return func(ts []discovery.Target) bool { return slices.Equal(names(ts), want) }
}

func mustSelect(t *testing.T, s discovery.Selector) *discovery.Selection {
	t.Helper()
	sel, err := s.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func TestDiscoverPodsOnNode(t *testing.T) {
	harness.Require(t, kubeErr)
	root, err := harness.CgroupV2Root()
	harness.Require(t, err)
	c := kube.Clientset
	suffix := strings.ToLower(randomID(t)[:6])
	shop, other := "shop-"+suffix, "other-"+suffix
	for _, ns := range []string{shop, other} {
		if err := kube.Namespace(t.Context(), ns); err != nil {
			t.Fatal(err)
		}
	}
	base := "/fleetprof-test-" + suffix

	// Pods on this node, one per runtime path form, and one on another node.
	idA, idB, idC, idD := randomID(t), randomID(t), randomID(t), randomID(t)
	pA := createPod(t, shop, "api-1", "node-a", map[string]string{"app": "api", "tier": "web", "app.kubernetes.io/part-of": "shop"}, "containerd://"+idA)
	pB := createPod(t, shop, "db-1", "node-a", map[string]string{"app": "db", "tier": "db"}, "cri-o://"+idB)
	pC := createPod(t, other, "api-2", "node-a", map[string]string{"app": "api"}, "docker://"+idC)
	pD := createPod(t, shop, "api-remote", "node-b", map[string]string{"app": "api"}, "containerd://"+idD)
	uidSlice := func(p *corev1.Pod) string { return strings.ReplaceAll(string(p.UID), "-", "_") }

	// containerd and CRI-O under the systemd driver (v2), Docker under the
	// cgroupfs driver.
	cA := startContainer(t, base, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidSlice(pA)+".slice/cri-containerd-"+idA+".scope")
	cB := startContainer(t, base, "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+uidSlice(pB)+".slice/crio-"+idB+".scope")
	cC := startContainer(t, base, "/kubepods/burstable/pod"+string(pC.UID)+"/"+idC)
	cD := startContainer(t, base, "/kubepods.slice/kubepods-pod"+uidSlice(pD)+".slice/cri-containerd-"+idD+".scope")

	fs := &discovery.CgroupFS{Root: root, Version: 2}
	d, err := New(Options{Client: c, Node: "node-a", Cgroups: fs, Resync: time.Second, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	w := &watcher{ix: discovery.NewIndex(discovery.IndexOptions{Node: "node-a"}), up: make(chan []discovery.Target)}
	go func() { done <- d.Run(ctx, w.up) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	w.waitFor(t, "the three pods of node-a", hasNames(shop+"/api-1/main", shop+"/db-1/main", other+"/api-2/main"))

	// Container id → cgroup → pids.
	for _, tg := range w.last {
		if tg.Labels[discovery.LabelPod] != "api-1" {
			continue
		}
		if d := cmp.Diff([]string{cA.cgroup}, tg.Cgroups); d != "" {
			t.Errorf("cgroups of api-1 (-want +got):\n%s", d)
		}
		pids, err := fs.PIDs(tg.Cgroups[0])
		if err != nil || !slices.Equal(pids, []int{cA.pid}) {
			t.Errorf("PIDs(%s) = %v, %v; want [%d]", tg.Cgroups[0], pids, err, cA.pid)
		}
		if tg.Labels["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"] != "shop" || tg.Labels[discovery.MetaContainerID] != "containerd://"+idA {
			t.Errorf("meta labels of api-1: %v", tg.Labels)
		}
	}

	ix := w.ix
	lookup := func(pid int) map[string]string {
		l, ok := ix.Lookup(uint32(pid))
		if !ok {
			return nil
		}
		return l
	}
	podLabels := func(ns, pod string) map[string]string {
		return map[string]string{"node": "node-a", "namespace": ns, "pod": pod, "container": "main"}
	}

	// Namespace + pod label selector.
	ix.Apply(discovery.Settings{Selection: mustSelect(t, discovery.Selector{Namespaces: []string{shop}, PodSelector: "app=api,tier!=db"})})
	for _, tc := range []struct {
		name string
		pid  int
		want map[string]string
	}{
		{"containerd pod selected", cA.pid, podLabels(shop, "api-1")},
		{"cri-o pod excluded by label", cB.pid, nil},
		{"docker pod excluded by namespace", cC.pid, nil},
		{"other node's pod", cD.pid, nil},
		{"host process", os.Getpid(), nil},
	} {
		if d := cmp.Diff(tc.want, lookup(tc.pid)); d != "" {
			t.Errorf("ns+selector: %s: Lookup(%d) (-want +got):\n%s", tc.name, tc.pid, d)
		}
	}
	ix.Apply(discovery.Settings{Selection: mustSelect(t, discovery.Selector{PodSelector: "app in (api,db)"})})
	for _, tc := range []struct {
		pid  int
		want map[string]string
	}{
		{cA.pid, podLabels(shop, "api-1")},
		{cB.pid, podLabels(shop, "db-1")},
		{cC.pid, podLabels(other, "api-2")},
		{cD.pid, nil},
	} {
		if d := cmp.Diff(tc.want, lookup(tc.pid)); d != "" {
			t.Errorf("selector only: Lookup(%d) (-want +got):\n%s", tc.pid, d)
		}
	}

	// Whole host: every process, with its pod labels when it has a pod.
	ix.Apply(discovery.Settings{})
	if l := lookup(cA.pid); l["pod"] != "api-1" || l["comm"] != "sleep" || l["pid"] != strconv.Itoa(cA.pid) || !strings.HasSuffix(l["exe"], "/sleep") {
		t.Errorf("whole host: Lookup(container A) = %v", l)
	}
	if l := lookup(cD.pid); l == nil || l["pod"] != "" || l["comm"] != "sleep" || l["node"] != "node-a" {
		t.Errorf("whole host: Lookup(other node's container) = %v", l)
	}

	// A pod deleted and a new one added are followed live.
	ix.Apply(discovery.Settings{Selection: mustSelect(t, discovery.Selector{Namespaces: []string{shop}})})
	zero := int64(0)
	if err := c.CoreV1().Pods(shop).Delete(t.Context(), "api-1", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	idE := randomID(t)
	pE := createPod(t, shop, "api-3", "node-a", map[string]string{"app": "api"}, "containerd://"+idE)
	cE := startContainer(t, base, "/kubepods.slice/kubepods-pod"+uidSlice(pE)+".slice/cri-containerd-"+idE+".scope")
	w.waitFor(t, "api-1 gone and api-3 there", func(ts []discovery.Target) bool {
		if !hasNames(shop+"/api-3/main", shop+"/db-1/main", other+"/api-2/main")(ts) {
			return false
		}
		for _, tg := range ts {
			if tg.Labels[discovery.LabelPod] == "api-3" {
				return len(tg.Cgroups) == 1
			}
		}
		return false
	})
	if l := lookup(cA.pid); l != nil {
		t.Errorf("deleted pod's process still a target: %v", l)
	}
	if d := cmp.Diff(podLabels(shop, "api-3"), lookup(cE.pid)); d != "" {
		t.Errorf("new pod (-want +got):\n%s", d)
	}
}

func TestRESTConfig(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := RESTConfig(""); err != ErrNotInCluster {
		t.Errorf("outside a cluster: %v, want ErrNotInCluster", err)
	}
	if _, err := RESTConfig(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing kubeconfig: no error")
	}
}

func TestContainerID(t *testing.T) {
	for in, want := range map[string]string{"containerd://abc": "abc", "cri-o://x": "x", "docker://": "", "plain": "plain"} {
		if got, _ := ContainerID(in); got != want {
			t.Errorf("ContainerID(%q) = %q, want %q", in, got, want)
		}
	}
}
