package relabel

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// FuzzProcess decodes rules from YAML and runs them over a target: no
// panics, the input is never modified, a kept target has no "__" labels
// and no empty values, and the result is deterministic.
func FuzzProcess(f *testing.F) {
	f.Add("[{source_labels: [a], target_label: b}]", "a", "x", "__meta_c", "y")
	f.Add("[{action: labelmap, regex: '__meta_(.+)'}]", "__meta_app", "api", "b", "")
	f.Add("[{action: hashmod, source_labels: [a, b], modulus: 7, target_label: s}, {source_labels: [s], regex: '3', action: drop}]", "a", "1", "b", "2")
	f.Add("[{action: keepequal, source_labels: [a], target_label: b}]", "a", "1", "b", "1")
	f.Add("[{action: labelkeep, regex: 'a|__.*'}, {action: uppercase, source_labels: [__x], target_label: a}]", "a", "q", "__x", "low")
	f.Fuzz(func(t *testing.T, rulesYAML, k1, v1, k2, v2 string) {
		var cfgs []Config
		if err := yaml.Unmarshal([]byte(rulesYAML), &cfgs); err != nil {
			return
		}
		r, err := Compile(cfgs)
		if err != nil {
			return
		}
		in := map[string]string{k1: v1, k2: v2}
		orig := map[string]string{k1: v1, k2: v2}
		out, keep := r.Process(in)
		if !cmp.Equal(in, orig) {
			t.Fatalf("Process modified its input: %v -> %v", orig, in)
		}
		if !keep {
			if out != nil {
				t.Fatalf("dropped target returned labels %v", out)
			}
		}
		for k, v := range out {
			if strings.HasPrefix(k, "__") || v == "" {
				t.Fatalf("output label %q=%q", k, v)
			}
		}
		out2, keep2 := r.Process(in)
		if keep2 != keep || !cmp.Equal(out, out2) {
			t.Fatalf("not deterministic: %v %v vs %v %v", out, keep, out2, keep2)
		}
	})
}

func BenchmarkProcess(b *testing.B) {
	var cfgs []Config
	if err := yaml.Unmarshal([]byte(`
- source_labels: [__meta_kubernetes_namespace]
  regex: kube-system
  action: drop
- source_labels: [__meta_kubernetes_namespace]
  target_label: namespace
- source_labels: [__meta_kubernetes_pod_name]
  target_label: pod
- action: labelmap
  regex: __meta_kubernetes_pod_label_(.+)
- source_labels: [pod]
  modulus: 4
  target_label: shard
  action: hashmod
`), &cfgs); err != nil {
		b.Fatal(err)
	}
	r, err := Compile(cfgs)
	if err != nil {
		b.Fatal(err)
	}
	in := map[string]string{
		"__meta_kubernetes_namespace":      "shop",
		"__meta_kubernetes_pod_name":       "api-7d9f",
		"__meta_kubernetes_pod_label_app":  "api",
		"__meta_kubernetes_pod_label_tier": "web",
		"node":                             "node-a",
		"container":                        "server",
		"comm":                             "java",
		"pid":                              "4242",
	}
	b.ReportAllocs()
	for b.Loop() {
		r.Process(in)
	}
}
