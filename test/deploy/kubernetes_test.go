package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/fleetprof/fleetprof/test/fleettest"
)

// overlaysDir is deploy/kubernetes/overlays.
func kubeDir(parts ...string) string {
	return filepath.Join(append([]string{fleettest.Root(), "deploy", "kubernetes"}, parts...)...)
}

// kustomize renders a kustomization with `kubectl kustomize` (offline).
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	out, err := exec.Command("kubectl", "kustomize", dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, ee.Stderr)
		}
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return out
}

// kubectl runs kubectl against the harness apiserver with stdin.
func kubectl(t *testing.T, kubeconfig string, stdin []byte, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// objects splits a rendered multi-document YAML into kind/name strings.
func objects(t *testing.T, rendered []byte) []string {
	t.Helper()
	var out []string
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(rendered), 4096)
	for {
		var m metav1.PartialObjectMetadata
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.ToLower(m.Kind)+"/"+m.Name)
	}
	return out
}

// TestKubernetesManifests renders every overlay with kubectl kustomize and
// applies it with --dry-run=server --validate=strict to a real
// kube-apiserver: the API server's own validation, defaulting, field
// checks and admission (Pod Security included) accept every object with
// no warning.
func TestKubernetesManifests(t *testing.T) {
	k := startKube(t)
	// The namespace must exist for a server-side dry run of what is in it.
	if out, err := kubectl(t, k.Kubeconfig, kustomize(t, kubeDir("namespace")), "apply", "-f", "-"); err != nil {
		t.Fatalf("create namespace: %v\n%s", err, out)
	}
	overlays, err := os.ReadDir(kubeDir("overlays"))
	if err != nil {
		t.Fatal(err)
	}
	if len(overlays) < 4 {
		t.Fatalf("%d overlays, want quickstart, agent-only, postgres, privileged-agent", len(overlays))
	}
	for _, o := range overlays {
		t.Run(o.Name(), func(t *testing.T) {
			rendered := kustomize(t, kubeDir("overlays", o.Name()))
			out, err := kubectl(t, k.Kubeconfig, rendered, "apply", "--dry-run=server", "--validate=strict", "-f", "-")
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
			}
			if strings.Contains(strings.ToLower(out), "warning") {
				t.Errorf("apply warned:\n%s", out)
			}
			objs := objects(t, rendered)
			for _, obj := range objs {
				kind, name, _ := strings.Cut(obj, "/")
				re := regexp.MustCompile(`(?m)^` + kind + `(\.[a-z0-9.]+)?/` + regexp.QuoteMeta(name) + ` (created|configured|unchanged) \(server dry run\)$`)
				if !re.MatchString(out) {
					t.Errorf("%s missing from the dry run:\n%s", obj, out)
				}
			}
			if n := strings.Count(out, "(server dry run)"); n != len(objs) {
				t.Errorf("%d objects in the dry run, %d rendered:\n%s", n, len(objs), out)
			}
			t.Logf("%d objects: %s", len(objs), strings.Join(objs, " "))
		})
	}
}

// TestPodSecurityLevels shows why the namespace is labelled privileged:
// in a namespace that enforces "restricted" the fleet server is accepted
// without a warning, while the agent's DaemonSet would be refused.
func TestPodSecurityLevels(t *testing.T) {
	k := startKube(t)
	ns := `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"psa-restricted","labels":{"pod-security.kubernetes.io/enforce":"restricted","pod-security.kubernetes.io/warn":"restricted"}}}`
	if out, err := kubectl(t, k.Kubeconfig, []byte(ns), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := kubectl(t, k.Kubeconfig, kustomize(t, kubeDir("fleet")), "apply", "-n", "psa-restricted", "--dry-run=server", "-f", "-")
	if err != nil || strings.Contains(out, "would violate") {
		t.Errorf("the fleet server is not accepted as restricted: %v\n%s", err, out)
	}
	out, _ = kubectl(t, k.Kubeconfig, kustomize(t, kubeDir("agent")), "apply", "-n", "psa-restricted", "--dry-run=server", "-f", "-")
	for _, want := range []string{"would violate PodSecurity", "hostPID=true", `restricted volume type "hostPath"`} {
		if !strings.Contains(out, want) {
			t.Errorf("agent under restricted: output lacks %q:\n%s", want, out)
		}
	}
}

// decode returns the rendered object of a kind and name.
func decode[T any](t *testing.T, rendered []byte, kind, name string) *T {
	t.Helper()
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(rendered), 4096)
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		md, _ := raw["metadata"].(map[string]any)
		if raw["kind"] != kind || md["name"] != name {
			continue
		}
		b, _ := yaml.ToJSON(mustJSON(t, raw))
		var v T
		if err := yaml.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return &v
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

// TestAgentDaemonSetShape pins the properties docs/deploy.md promises:
// not privileged, exactly the sampler's capabilities, host pids, every
// taint tolerated, node name from the downward API, token from a Secret
// file, state on a hostPath, read-only host mounts, least RBAC.
func TestAgentDaemonSetShape(t *testing.T) {
	r := kustomize(t, kubeDir("overlays", "quickstart"))
	ds := decode[appsv1.DaemonSet](t, r, "DaemonSet", "fleetprof-agent")
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	sc := c.SecurityContext
	if !spec.HostPID || sc == nil || (sc.Privileged != nil && *sc.Privileged) {
		t.Fatalf("hostPID=%v privileged=%v, want hostPID and not privileged", spec.HostPID, sc)
	}
	var added []string
	for _, c := range sc.Capabilities.Add {
		added = append(added, string(c))
	}
	slices.Sort(added)
	want := []string{"BPF", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH", "PERFMON", "SYSLOG", "SYS_PTRACE", "SYS_RESOURCE"}
	if !slices.Equal(added, want) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v add %v, want drop ALL add %v", sc.Capabilities.Drop, added, want)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %v, want one that tolerates every taint", spec.Tolerations)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME is %+v, want the downward API's spec.nodeName", e)
	}
	if !slices.Contains(c.Args, "--bootstrap-token-file=/etc/fleetprof/bootstrap/token") {
		t.Errorf("args %v lack --bootstrap-token-file", c.Args)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	for _, v := range spec.Volumes {
		m := mounts[v.Name]
		switch v.Name {
		case "state":
			if v.HostPath == nil || m.ReadOnly || !slices.Contains(c.Args, "--state-dir="+m.MountPath) {
				t.Errorf("state volume %+v mounted %+v: want a writable hostPath used as --state-dir", v, m)
			}
		case "bootstrap-token":
			if v.Secret == nil || v.Secret.SecretName != "fleetprof-bootstrap-token" || !m.ReadOnly {
				t.Errorf("token volume %+v: want Secret fleetprof-bootstrap-token, read-only", v)
			}
		case "cgroup", "btf":
			if v.HostPath == nil || !m.ReadOnly {
				t.Errorf("%s volume %+v mounted %+v: want a read-only hostPath", v.Name, v, m)
			}
		}
	}
	cr := decode[rbacv1.ClusterRole](t, r, "ClusterRole", "fleetprof-agent")
	got := map[string][]string{}
	for _, rule := range cr.Rules {
		for _, res := range rule.Resources {
			got[res] = append(got[res], rule.Verbs...)
		}
	}
	if !slices.Equal(got["pods"], []string{"list", "watch"}) || !slices.Equal(got["nodes"], []string{"get"}) || len(got) != 2 {
		t.Errorf("ClusterRole rules %v, want pods list/watch and nodes get only", got)
	}
	ss := decode[appsv1.StatefulSet](t, r, "StatefulSet", "fleetprof")
	fc := ss.Spec.Template.Spec.Containers[0]
	if fc.ReadinessProbe == nil || fc.ReadinessProbe.HTTPGet.Path != "/readyz" || fc.LivenessProbe == nil || fc.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("fleet probes %+v %+v, want /readyz and /healthz", fc.ReadinessProbe, fc.LivenessProbe)
	}
	if len(ss.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("fleet has %d volume claim templates, want one for the store", len(ss.Spec.VolumeClaimTemplates))
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
