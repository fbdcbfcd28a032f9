package relabel

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// rules decodes a YAML list of relabel configs the way the remote config
// does, and compiles it.
func rules(t *testing.T, y string) *Rules {
	t.Helper()
	var cfgs []Config
	if err := yaml.Unmarshal([]byte(y), &cfgs); err != nil {
		t.Fatalf("decode %s: %v", y, err)
	}
	r, err := Compile(cfgs)
	if err != nil {
		t.Fatalf("compile %s: %v", y, err)
	}
	return r
}

func TestProcess(t *testing.T) {
	target := map[string]string{
		"__meta_kubernetes_namespace":          "shop",
		"__meta_kubernetes_pod_name":           "api-7d9f",
		"__meta_kubernetes_pod_label_app":      "api",
		"__meta_kubernetes_pod_label_tier":     "web",
		"__meta_kubernetes_pod_container_name": "server",
		"node":                                 "node-a",
		"comm":                                 "java",
		"pid":                                  "4242",
	}
	base := map[string]string{"node": "node-a", "comm": "java", "pid": "4242"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	tests := []struct {
		name string
		yaml string
		in   map[string]string // target when nil
		want map[string]string // nil means dropped
	}{
		{name: "no rules drops __meta labels", yaml: `[]`, want: base},
		{name: "replace defaults copy a label", yaml: `
- source_labels: [__meta_kubernetes_namespace]
  target_label: namespace`, want: with("namespace", "shop")},
		{name: "replace with groups and separator", yaml: `
- source_labels: [__meta_kubernetes_namespace, __meta_kubernetes_pod_name]
  separator: /
  regex: (.+)/(.+)-[0-9a-f]+
  target_label: workload
  replacement: $1.${2}`, want: with("workload", "shop.api")},
		{name: "replace target from group", yaml: `
- source_labels: [__meta_kubernetes_pod_label_tier]
  regex: (.*)
  target_label: tier_$1
  replacement: "yes"`, want: with("tier_web", "yes")},
		{name: "replace no match leaves labels", yaml: `
- source_labels: [comm]
  regex: python.*
  target_label: lang
  replacement: python`, want: base},
		{name: "replace regex is anchored", yaml: `
- source_labels: [comm]
  regex: av
  target_label: lang
  replacement: x`, want: base},
		{name: "replace with empty result deletes", yaml: `
- target_label: pid
  replacement: ""`, want: with("pid", "")},
		{name: "replace literal with no source labels", yaml: `
- target_label: env
  replacement: prod`, want: with("env", "prod")},
		{name: "replace missing source is empty string", yaml: `
- source_labels: [nope]
  regex: ""
  target_label: had_nope
  replacement: "no"`, want: with("had_nope", "no")},
		{name: "replace dot matches newline", in: map[string]string{"a": "x\ny"}, yaml: `
- source_labels: [a]
  regex: x.y
  target_label: b
  replacement: matched`, want: map[string]string{"a": "x\ny", "b": "matched"}},
		{name: "replace invalid expanded target is skipped", in: map[string]string{"a": "1x"}, yaml: `
- source_labels: [a]
  target_label: $1
  replacement: v`, want: map[string]string{"a": "1x"}},
		{name: "keep matching", yaml: `
- source_labels: [__meta_kubernetes_pod_label_app]
  regex: api|web
  action: keep`, want: base},
		{name: "keep drops target", yaml: `
- source_labels: [__meta_kubernetes_pod_label_app]
  regex: db
  action: keep`, want: nil},
		{name: "drop drops target", yaml: `
- source_labels: [__meta_kubernetes_namespace, comm]
  regex: shop;java
  action: drop`, want: nil},
		{name: "drop not matching keeps", yaml: `
- source_labels: [comm]
  regex: jav
  action: drop`, want: base},
		{name: "action is case-insensitive", yaml: `
- source_labels: [comm]
  regex: java
  action: DROP`, want: nil},
		{name: "rules after a drop do not run", yaml: `
- source_labels: [comm]
  regex: java
  action: drop
- target_label: x
  replacement: y`, want: nil},
		{name: "keepequal equal", in: map[string]string{"a": "1", "b": "1"}, yaml: `
- source_labels: [a]
  target_label: b
  action: keepequal`, want: map[string]string{"a": "1", "b": "1"}},
		{name: "keepequal differs drops", in: map[string]string{"a": "1", "b": "2"}, yaml: `
- source_labels: [a]
  target_label: b
  action: keepequal`, want: nil},
		{name: "dropequal equal drops", in: map[string]string{"a": "1", "b": "1"}, yaml: `
- source_labels: [a]
  target_label: b
  action: dropequal`, want: nil},
		{name: "dropequal differs keeps", in: map[string]string{"a": "1", "b": "2"}, yaml: `
- source_labels: [a]
  target_label: b
  action: dropequal`, want: map[string]string{"a": "1", "b": "2"}},
		{name: "hashmod then keep one shard", in: map[string]string{"a": "foo"}, yaml: `
- source_labels: [a]
  modulus: 10
  target_label: __tmp_shard
  action: hashmod
- source_labels: [__tmp_shard]
  regex: "6"
  action: keep`, want: map[string]string{"a": "foo"}},
		{name: "hashmod other shard dropped", in: map[string]string{"a": "foo"}, yaml: `
- source_labels: [a]
  modulus: 10
  target_label: __tmp_shard
  action: hashmod
- source_labels: [__tmp_shard]
  regex: "5"
  action: keep`, want: nil},
		{name: "hashmod visible label", in: map[string]string{"a": "foo"}, yaml: `
- source_labels: [a]
  modulus: 1000
  target_label: shard
  action: hashmod`, want: map[string]string{"a": "foo", "shard": "696"}},
		{name: "labelmap pod labels", yaml: `
- regex: __meta_kubernetes_pod_label_(.+)
  action: labelmap`, want: with("app", "api", "tier", "web")},
		{name: "labelmap custom replacement", yaml: `
- regex: __meta_kubernetes_pod_label_(.+)
  replacement: k8s_$1
  action: labelmap`, want: with("k8s_app", "api", "k8s_tier", "web")},
		{name: "labelmap collision: set label wins over untouched", in: map[string]string{"x_a": "1", "y_a": "2"}, yaml: `
- target_label: y_a
  replacement: "3"
- regex: (?:x|y)_(.*)
  action: labelmap`, want: map[string]string{"x_a": "1", "y_a": "3", "a": "3"}},
		{name: "labeldrop", yaml: `
- regex: p.d|comm
  action: labeldrop`, want: map[string]string{"node": "node-a"}},
		{name: "labelkeep keeps meta for later rules", yaml: `
- regex: node|__meta_kubernetes_namespace
  action: labelkeep
- source_labels: [__meta_kubernetes_namespace]
  target_label: ns`, want: map[string]string{"node": "node-a", "ns": "shop"}},
		{name: "lowercase", in: map[string]string{"a": "MiXeD", "b": "Case"}, yaml: `
- source_labels: [a, b]
  separator: "-"
  target_label: c
  action: lowercase`, want: map[string]string{"a": "MiXeD", "b": "Case", "c": "mixed-case"}},
		{name: "uppercase", in: map[string]string{"a": "MiXeD"}, yaml: `
- source_labels: [a]
  target_label: a
  action: uppercase`, want: map[string]string{"a": "MIXED"}},
		{name: "scratch __tmp labels removed at the end", in: map[string]string{"a": "1"}, yaml: `
- target_label: __tmp
  replacement: x
- source_labels: [__tmp]
  target_label: b`, want: map[string]string{"a": "1", "b": "x"}},
		{name: "empty input values do not exist", in: map[string]string{"a": "", "b": "1"}, yaml: `
- regex: .*
  action: labelkeep`, want: map[string]string{"b": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			if in == nil {
				in = target
			}
			before := cmp.Diff(map[string]string{}, in)
			got, keep := rules(t, tt.yaml).Process(in)
			if tt.want == nil {
				if keep || got != nil {
					t.Fatalf("Process = %v, %v; want the target dropped", got, keep)
				}
			} else {
				if !keep {
					t.Fatalf("Process dropped the target, want %v", tt.want)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("Process mismatch (-want +got):\n%s", diff)
				}
			}
			if after := cmp.Diff(map[string]string{}, in); after != before {
				t.Errorf("Process modified its input")
			}
		})
	}
}

func TestNilRules(t *testing.T) {
	var r *Rules
	got, keep := r.Process(map[string]string{"__meta_x": "1", "a": "b"})
	if !keep || !cmp.Equal(got, map[string]string{"a": "b"}) {
		t.Errorf("nil Rules: %v, %v", got, keep)
	}
	if r.Len() != 0 {
		t.Errorf("nil Rules Len = %d", r.Len())
	}
}

// TestHashModMatchesPrometheus pins values computed by
// github.com/prometheus/prometheus v0.316.0 model/relabel for the same
// inputs, so existing sharding rules shard identically.
func TestHashModMatchesPrometheus(t *testing.T) {
	tests := []struct {
		value   string
		modulus uint64
		want    string
	}{
		{"", 3, "1"},
		{"", 10, "8"},
		{"", 1000, "958"},
		{"", 9223372036854775813, "7602086723416769145"},
		{"foo", 3, "2"},
		{"foo", 10, "6"},
		{"foo", 1000, "696"},
		{"foo", 9223372036854775813, "7921661662980252883"},
		{"10.0.0.1:9100", 3, "2"},
		{"10.0.0.1:9100", 10, "5"},
		{"10.0.0.1:9100", 1000, "645"},
		{"10.0.0.1:9100", 9223372036854775813, "5548061184049187645"},
		{"node-a;nginx.service", 3, "2"},
		{"node-a;nginx.service", 10, "8"},
		{"node-a;nginx.service", 1000, "718"},
		{"node-a;nginx.service", 9223372036854775813, "1975896908996554718"},
		{"shop/api-7d9f", 3, "2"},
		{"shop/api-7d9f", 10, "0"},
		{"shop/api-7d9f", 1000, "330"},
		{"shop/api-7d9f", 9223372036854775813, "7348156550574095330"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Action, c.SourceLabels, c.TargetLabel, c.Modulus = HashMod, []string{"a"}, "shard", tt.modulus
		r, err := Compile([]Config{c})
		if err != nil {
			t.Fatal(err)
		}
		in := map[string]string{"a": tt.value}
		got, _ := r.Process(in)
		if got["shard"] != tt.want {
			t.Errorf("hashmod(%q, %d) = %q, want %q", tt.value, tt.modulus, got["shard"], tt.want)
		}
		if s := strconv.FormatUint(HashModValue(tt.value, tt.modulus), 10); s != tt.want {
			t.Errorf("HashModValue(%q, %d) = %s, want %s", tt.value, tt.modulus, s, tt.want)
		}
	}
	if HashModValue("x", 0) != 0 {
		t.Error("HashModValue with modulus 0 is not 0")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // "path: reason prefix"
	}{
		{name: "bad regex names the field", yaml: `
- source_labels: [a]
  target_label: b
- source_labels: [a]
  target_label: b
- source_labels: [a]
  regex: "(abc"
  target_label: b`, want: []string{"relabel_configs[2].regex: error parsing regexp: missing closing ): `(abc`"}},
		{name: "unknown action", yaml: `[{action: explode}]`, want: []string{`relabel_configs[0].action: unknown relabel action "explode"`}},
		{name: "empty action", yaml: `[{action: ""}]`, want: []string{`relabel_configs[0].action: must not be empty`}},
		{name: "replace needs target", yaml: `[{source_labels: [a]}]`, want: []string{`relabel_configs[0].target_label: required for replace action`}},
		{name: "replace bad target", yaml: `[{target_label: "a-b"}]`, want: []string{`relabel_configs[0].target_label: "a-b" is invalid for replace action`}},
		{name: "replace bad target with var", yaml: `[{target_label: "a-$1"}]`, want: []string{`relabel_configs[0].target_label: "a-$1" is invalid for replace action`}},
		{name: "hashmod needs modulus", yaml: `[{action: hashmod, target_label: s, source_labels: [a]}]`, want: []string{`relabel_configs[0].modulus: must be non-zero for hashmod action`}},
		{name: "hashmod target no vars", yaml: `[{action: hashmod, target_label: s_$1, modulus: 2}]`, want: []string{`relabel_configs[0].target_label: "s_$1" is invalid for hashmod action`}},
		{name: "lowercase no replacement", yaml: `[{action: lowercase, target_label: s, replacement: x}]`, want: []string{`relabel_configs[0].replacement: can not be set for lowercase action`}},
		{name: "uppercase needs target", yaml: `[{action: uppercase}]`, want: []string{`relabel_configs[0].target_label: required for uppercase action`}},
		{name: "keepequal only source and target", yaml: `[{action: keepequal, target_label: s, regex: x, separator: ","}]`, want: []string{
			`relabel_configs[0].regex: keepequal action takes only source_labels and target_label`,
			`relabel_configs[0].separator: keepequal action takes only source_labels and target_label`}},
		{name: "labeldrop only regex", yaml: `[{action: labeldrop, regex: x, source_labels: [a], target_label: b}]`, want: []string{
			`relabel_configs[0].source_labels: labeldrop action takes only regex`,
			`relabel_configs[0].target_label: labeldrop action takes only regex`}},
		{name: "labelmap bad replacement", yaml: `[{action: labelmap, regex: "(.*)", replacement: "a.$1"}]`, want: []string{`relabel_configs[0].replacement: "a.$1" is invalid for labelmap action`}},
		{name: "bad source label", yaml: `[{source_labels: [ok, "not-ok"], target_label: x}]`, want: []string{`relabel_configs[0].source_labels[1]: "not-ok" is not a valid label name`}},
		{name: "several rules, all reported", yaml: `[{action: explode}, {regex: "[", target_label: x}]`, want: []string{
			`relabel_configs[0].action: unknown relabel action "explode"`,
			"relabel_configs[1].regex: error parsing regexp: missing closing ]: `[`"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfgs []Config
			if err := yaml.Unmarshal([]byte(tt.yaml), &cfgs); err != nil {
				t.Fatal(err)
			}
			r, err := Compile(cfgs)
			if err == nil {
				t.Fatalf("Compile succeeded, want errors %q", tt.want)
			}
			if r != nil {
				t.Errorf("Compile returned rules with an error")
			}
			var got []string
			for _, e := range unjoin(err) {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("error %T (%v) is not a *FieldError", e, e)
				}
				got = append(got, fe.Error())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidConfigs(t *testing.T) {
	for _, y := range []string{
		`[{action: replace, target_label: "${1}_x", regex: "(a)"}]`,
		`[{action: keepequal, target_label: b, source_labels: [a]}]`,
		`[{action: keep, regex: "(.*)", modulus: 3}]`, // Prometheus ignores modulus here
		`[{action: labelmap, regex: "__meta_(.+)", replacement: "${1}"}]`,
		`[{action: labelkeep, regex: ".*"}]`,
		`[{source_labels: [a], separator: "", regex: "", replacement: "", target_label: b}]`,
	} {
		rules(t, y)
	}
}

func TestDecodeDefaults(t *testing.T) {
	tests := []struct {
		yaml string
		want Config
	}{
		{yaml: `{target_label: x}`, want: Config{Separator: ";", Regex: "(.*)", Replacement: "$1", Action: Replace, TargetLabel: "x"}},
		{yaml: `{target_label: x, separator: "", regex: "", replacement: ""}`, want: Config{Action: Replace, TargetLabel: "x"}},
		{yaml: `{action: LabelMap, regex: "a(.*)"}`, want: Config{Separator: ";", Regex: "a(.*)", Replacement: "$1", Action: LabelMap}},
	}
	for _, tt := range tests {
		var c Config
		if err := yaml.Unmarshal([]byte(tt.yaml), &c); err != nil {
			t.Fatalf("%s: %v", tt.yaml, err)
		}
		if diff := cmp.Diff(tt.want, c); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.yaml, diff)
		}
		var j Config
		js := strings.NewReplacer("target_label", `"target_label"`, "separator", `"separator"`, "regex", `"regex"`, "replacement", `"replacement"`, "action", `"action"`, "LabelMap", `"LabelMap"`, ": x", `: "x"`).Replace(tt.yaml)
		if err := j.UnmarshalJSON([]byte(js)); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		if diff := cmp.Diff(tt.want, j); diff != "" {
			t.Errorf("JSON %s (-want +got):\n%s", js, diff)
		}
	}
}

func TestDecodeUnknownField(t *testing.T) {
	var cfgs []Config
	err := yaml.Unmarshal([]byte("- target_label: x\n- target_label: y\n  regexp: a\n"), &cfgs)
	if err == nil || !strings.Contains(err.Error(), "line 3: field regexp not found") {
		t.Errorf("unknown field: got %v, want a line-3 error naming regexp", err)
	}
	var c Config
	if err := c.UnmarshalJSON([]byte(`{"regexp":"a"}`)); err == nil {
		t.Error("JSON unknown field accepted")
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	in := []Config{
		{SourceLabels: []string{"a", "b"}, Separator: "", Regex: "", Replacement: "", TargetLabel: "x", Action: Replace},
		{SourceLabels: []string{"a"}, Separator: ";", Regex: "(.*)", Replacement: "$1", TargetLabel: "s", Action: HashMod, Modulus: 7},
	}
	out, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var back []Config
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s\n%s", diff, out)
	}
}
