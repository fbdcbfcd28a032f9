package config

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleetprof/fleetprof/internal/relabel"
)

func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse(%q): %v", doc, err)
	}
	return c
}

func TestParseDesignExample(t *testing.T) {
	b, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Sampling: Sampling{FrequencyHz: 19, Duration: Duration(10 * time.Second)},
		Targets: Targets{
			Systemd:    SystemdTargets{Units: []string{"docker-*.scope", "nginx.service"}},
			Kubernetes: KubernetesTargets{Namespaces: []string{"shop"}, PodSelector: "app=api,tier!=db"},
			Processes:  ProcessTargets{Comm: "^java$"},
		},
		ExternalLabels: map[string]string{"cluster": "prod"},
		Upload:         Upload{Address: "fleet.example:443", Protocol: ProtocolParca},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
	if !got.HasSelectors() {
		t.Error("HasSelectors() = false for a config with units")
	}
}

func TestDefaults(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n", "{}", "---\n{}\n", "sampling: {}\nupload: {}\n", "sampling:\ntargets:\n"} {
		c := mustParse(t, doc)
		if diff := cmp.Diff(Default(), c); diff != "" {
			t.Errorf("Parse(%q) is not Default() (-want +got):\n%s", doc, diff)
		}
		if c.HasSelectors() {
			t.Errorf("Parse(%q).HasSelectors() = true", doc)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default() is invalid: %v", err)
	}
	d := Default()
	if d.Sampling.FrequencyHz != 19 || time.Duration(d.Sampling.Duration) != 10*time.Second || d.Upload.Protocol != "parca" || d.Upload.Address != "" {
		t.Errorf("Default() = %+v", d)
	}
}

func TestHashEquivalent(t *testing.T) {
	groups := [][]string{
		{ // defaults spelled out or not
			"",
			"sampling: {frequency_hz: 19, duration: 10s}\nupload: {address: '', protocol: parca, insecure: false}\n",
			"# comment\nupload:\n  protocol: parca\nsampling:\n  duration: 10000ms\n",
			"relabel_configs: []\nexternal_labels: {}\ntargets: {systemd: {units: []}}\n",
		},
		{ // key order, flow vs block, set order, selector spacing
			"targets:\n  systemd: {units: [b.service, a.service]}\n  kubernetes: {namespaces: [x, y], pod_selector: 'tier!=db, app=api'}\nexternal_labels: {a: '1', b: '2'}\n",
			"external_labels:\n  b: \"2\"\n  a: \"1\"\ntargets:\n  kubernetes:\n    pod_selector: app=api,tier!=db\n    namespaces:\n    - y\n    - x\n    - y\n  systemd:\n    units: [a.service, b.service, a.service]\n",
		},
		{ // relabel defaults spelled out, action case, duration spelling
			"sampling: {duration: 1m}\nrelabel_configs: [{source_labels: [a], target_label: b}]\n",
			"sampling: {duration: 60s}\nrelabel_configs:\n- source_labels: [a]\n  target_label: b\n  separator: ;\n  regex: (.*)\n  replacement: $1\n  action: Replace\n",
		},
	}
	var hashes []string
	for gi, g := range groups {
		first := mustParse(t, g[0]).HashString()
		for _, doc := range g[1:] {
			if h := mustParse(t, doc).HashString(); h != first {
				t.Errorf("group %d: %q hashes %s, %q hashes %s", gi, g[0], first, doc, h)
			}
		}
		hashes = append(hashes, first)
	}
	for i := range hashes {
		for j := i + 1; j < len(hashes); j++ {
			if hashes[i] == hashes[j] {
				t.Errorf("groups %d and %d hash equal", i, j)
			}
		}
	}
}

func TestHashDiffers(t *testing.T) {
	base := "sampling: {frequency_hz: 19}\nrelabel_configs: [{source_labels: [a, b], target_label: c}, {regex: x, action: labeldrop}]\nexternal_labels: {cluster: prod}\n"
	variants := []string{
		strings.Replace(base, "19", "20", 1),
		strings.Replace(base, "[a, b]", "[b, a]", 1),
		"sampling: {frequency_hz: 19}\nrelabel_configs: [{regex: x, action: labeldrop}, {source_labels: [a, b], target_label: c}]\nexternal_labels: {cluster: prod}\n",
		strings.Replace(base, "prod", "dev", 1),
		base + "upload: {insecure: true}\n",
		base + "upload: {protocol: pyroscope}\n",
		base + "targets: {processes: {exe: java}}\n",
		base + "targets: {processes: {comm: java}}\n",
		strings.Replace(base, "target_label: c}", "target_label: c, separator: ''}", 1),
	}
	h := mustParse(t, base).HashString()
	seen := map[string]string{h: base}
	for _, v := range variants {
		vh := mustParse(t, v).HashString()
		if prev, ok := seen[vh]; ok {
			t.Errorf("%q and %q hash equal", prev, v)
		}
		seen[vh] = v
	}
	if len(h) != 64 || len(mustParse(t, base).Hash()) != 32 {
		t.Errorf("hash sizes: %q", h)
	}
}

func TestHashOfGoBuiltConfig(t *testing.T) {
	c := Default()
	c.Targets.Systemd.Units = []string{"b.service", "a.service"}
	c.ExternalLabels = map[string]string{}
	c.RelabelConfigs = []relabel.Config{}
	parsed := mustParse(t, "targets: {systemd: {units: [a.service, b.service]}}")
	if c.HashString() != parsed.HashString() {
		t.Errorf("Go-built config hashes %s, parsed equivalent %s", c.HashString(), parsed.HashString())
	}
	if c.Targets.Systemd.Units[0] != "b.service" {
		t.Error("Hash modified its receiver")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := []string{string(b), "", "relabel_configs:\n- {source_labels: [__meta_kubernetes_pod_label_app], regex: 'a|b', action: keep}\n- {target_label: x, replacement: '', separator: '', regex: ''}\n- {action: hashmod, source_labels: [pid], modulus: 4, target_label: __tmp}\nexternal_labels: {'y': 'multi\n line', z: \"yes\"}\n"}
	for _, doc := range docs {
		c := mustParse(t, doc)
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal()) of %q: %v\n%s", doc, err, out)
		}
		if diff := cmp.Diff(c, back); diff != "" {
			t.Errorf("round trip of %q (-want +got):\n%s\n%s", doc, diff, out)
		}
		if back.HashString() != c.HashString() {
			t.Errorf("round trip changed the hash of %q", doc)
		}
		again, err := back.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if string(again) != string(out) {
			t.Errorf("Marshal not stable:\n%s\n---\n%s", out, again)
		}
	}
}

func TestValidationErrors(t *testing.T) {
	tests := []struct {
		doc  string
		want []string
	}{
		{"sampling: {frequency_hz: 5000}", []string{"sampling.frequency_hz: must be between 1 and 1000, got 5000"}},
		{"sampling: {frequency_hz: 0}", []string{"sampling.frequency_hz: must be between 1 and 1000, got 0"}},
		{"sampling: {duration: 500ms}", []string{"sampling.duration: must be between 1s and 5m0s, got 500ms"}},
		{"sampling: {duration: 6m}", []string{"sampling.duration: must be between 1s and 5m0s, got 6m0s"}},
		{"sampling: {duration: -1s}", []string{"sampling.duration: must be between 1s and 5m0s, got -1s"}},
		{"targets: {systemd: {units: [ok.service, '', 'a[', 'x/y.service']}}", []string{
			"targets.systemd.units[1]: must not be empty",
			`targets.systemd.units[2]: invalid glob "a[": syntax error in pattern`,
			`targets.systemd.units[3]: unit names contain no '/', got "x/y.service"`}},
		{"targets: {kubernetes: {namespaces: [shop, Shop, a.b]}}", []string{
			`targets.kubernetes.namespaces[1]: "Shop" is not a valid namespace: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
			`targets.kubernetes.namespaces[2]: "a.b" is not a valid namespace: must not contain dots`}},
		{"targets: {kubernetes: {pod_selector: 'app=api,tier db'}}", []string{"targets.kubernetes.pod_selector: at offset 8: found 'db', expected: in, notin, =, ==, !=, gt, lt"}},
		{"targets: {processes: {comm: '(java', exe: '['}}", []string{
			"targets.processes.comm: error parsing regexp: missing closing ): `(java`",
			"targets.processes.exe: error parsing regexp: missing closing ]: `[`"}},
		{"relabel_configs: [{target_label: a}, {target_label: b}, {regex: '(x', target_label: c}]", []string{"relabel_configs[2].regex: error parsing regexp: missing closing ): `(x`"}},
		{"relabel_configs: [{action: hashmod, target_label: s}]", []string{"relabel_configs[0].modulus: must be non-zero for hashmod action"}},
		{"external_labels: {__name__: x, 'a-b': c, ok: '', 9x: y}", []string{
			`external_labels["9x"]: "9x" is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)`,
			`external_labels.__name__: label names starting with "__" are reserved`,
			`external_labels["a-b"]: "a-b" is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)`,
			`external_labels.ok: value must not be empty`}},
		{"upload: {protocol: otlp}", []string{`upload.protocol: must be "parca" or "pyroscope", got "otlp"`}},
		{"upload: {protocol: ''}", []string{`upload.protocol: must be "parca" or "pyroscope", got ""`}},
		{"upload: {address: fleet.example}", []string{`upload.address: must be host:port, got "fleet.example"`}},
		{"upload: {address: ':443'}", []string{`upload.address: missing host in ":443"`}},
		{"upload: {address: 'fleet.example:https'}", []string{`upload.address: port must be a number between 1 and 65535, got "https"`}},
		{"upload: {address: 'fleet.example:0'}", []string{`upload.address: port must be a number between 1 and 65535, got "0"`}},
		{"upload: {address: 'http://fleet.example:443'}", []string{`upload.address: must be host:port, got "http://fleet.example:443"`}},
		{"sampling: {frequency_hz: 5000, duration: 10m}\nupload: {protocol: x}\n", []string{
			"sampling.frequency_hz: must be between 1 and 1000, got 5000",
			"sampling.duration: must be between 1s and 5m0s, got 10m0s",
			`upload.protocol: must be "parca" or "pyroscope", got "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.doc, func(t *testing.T) {
			c, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Error("Parse returned a config with an error")
			}
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrSyntax) {
				t.Errorf("errors.Is(ErrInvalid) = %v, errors.Is(ErrSyntax) = %v", errors.Is(err, ErrInvalid), errors.Is(err, ErrSyntax))
			}
			var first *ValidationError
			if !errors.As(err, &first) {
				t.Fatalf("errors.As(*ValidationError) failed on %v", err)
			}
			var got []string
			for _, e := range unjoin(err) {
				var ve *ValidationError
				if !errors.As(e, &ve) {
					t.Fatalf("%T %v is not a *ValidationError", e, e)
				}
				got = append(got, ve.Error())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if first.Error() != tt.want[0] || first.Path+": "+first.Reason != first.Error() {
				t.Errorf("first error %q: Path %q Reason %q", first.Error(), first.Path, first.Reason)
			}
		})
	}
}

func TestListLimits(t *testing.T) {
	list := func(prefix string, n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(prefix + strconv.Itoa(i))
		}
		return b.String()
	}
	var labels strings.Builder
	for i := range MaxExternalLabels + 1 {
		labels.WriteString("l" + strconv.Itoa(i) + ": v, ")
	}
	tests := []struct{ doc, want string }{
		{"targets: {systemd: {units: [" + list("u", MaxUnits+1) + "]}}", "targets.systemd.units: at most 1000 entries, got 1001"},
		{"targets: {kubernetes: {namespaces: [" + list("n", MaxNamespaces+1) + "]}}", "targets.kubernetes.namespaces: at most 1000 entries, got 1001"},
		{"relabel_configs: [" + strings.Repeat("{target_label: x}, ", MaxRelabelConfigs) + "{target_label: y}]", "relabel_configs: at most 1000 entries, got 1001"},
		{"external_labels: {" + labels.String() + "}", "external_labels: at most 64 entries, got 65"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Error() != tt.want {
			t.Errorf("got %v, want %q", err, tt.want)
		}
	}
	mustParse(t, "targets: {systemd: {units: ["+list("u", MaxUnits)+"]}}")
}

func TestValidValues(t *testing.T) {
	for _, doc := range []string{
		"sampling: {frequency_hz: 1, duration: 1s}",
		"sampling: {frequency_hz: 1000, duration: 5m}",
		"targets: {systemd: {units: ['*'], }, kubernetes: {namespaces: [kube-system, a1]}, processes: {comm: '^(java|python3)$', exe: '/usr/bin/.*'}}",
		"targets: {kubernetes: {pod_selector: 'app in (a,b),!canary,tier'}}",
		"upload: {address: '[::1]:4100', protocol: pyroscope, insecure: true}",
		"upload: {address: '127.0.0.1:7070'}",
		"external_labels: {_x: y, Cluster_2: prod}",
	} {
		mustParse(t, doc)
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		doc      string
		contains string
	}{
		{"sampling:\n  frequency_hz: 19\n  bogus: 1\n", "line 3: field bogus not found"},
		{"samplng: {}\n", "line 1: field samplng not found"},
		{"targets:\n  systemd:\n    unit: [x]\n", "line 3: field unit not found"},
		{"relabel_configs:\n- target_label: x\n  regexp: a\n", "line 3: field regexp not found"},
		{"upload: {protocol: parca, address: [\n", "line 1"},
		{"sampling: {frequency_hz: fast}\n", "line 1: cannot unmarshal !!str `fast` into int"},
		{"sampling:\n  duration: 10\n", `line 2: time: missing unit in duration "10"`},
		{"sampling:\n  duration: [1s]\n", "line 2: duration must be a string"},
		{"upload: {insecure: maybe}\n", "line 1: cannot unmarshal"},
		{"sampling: {}\n---\nupload: {}\n", "line 2: more than one YAML document"},
		{"a: b\n\tc: d\n", "line 2"},
		{"sampling: {frequency_hz: 19, frequency_hz: 20}\n", `mapping key "frequency_hz" already defined`},
		{"- 1\n- 2\n", "cannot unmarshal !!seq"},
		{"relabel_configs:\n- target_label: x\n-\n", "line 3: empty list item"},
		{"targets: {systemd: {units: [a, null]}}\n", "line 1: empty list item"},
		{"x: &n ~\ntargets: {systemd: {units: [a, *n]}}\n", "line 1: field x not found"},
		{strings.Repeat("#", MaxSize+1), "more than 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.contains, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("got %v, want ErrSyntax", err)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not contain %q", err, tt.contains)
			}
		})
	}
}

func TestHasSelectors(t *testing.T) {
	tests := map[string]bool{
		"": false,
		"relabel_configs: [{target_label: a}]\nexternal_labels: {a: b}": false,
		"targets: {systemd: {units: [a]}}":                              true,
		"targets: {kubernetes: {namespaces: [a]}}":                      true,
		"targets: {kubernetes: {pod_selector: app=api}}":                true,
		"targets: {processes: {comm: java}}":                            true,
		"targets: {processes: {exe: java}}":                             true,
	}
	for doc, want := range tests {
		if got := mustParse(t, doc).HasSelectors(); got != want {
			t.Errorf("HasSelectors(%q) = %v, want %v", doc, got, want)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	d := Duration(90 * time.Second)
	b, err := d.MarshalJSON()
	if err != nil || string(b) != `"1m30s"` {
		t.Fatalf("MarshalJSON = %s, %v", b, err)
	}
	var back Duration
	if err := back.UnmarshalJSON(b); err != nil || back != d {
		t.Fatalf("UnmarshalJSON = %v, %v", back, err)
	}
	if err := back.UnmarshalJSON([]byte(`90`)); err == nil {
		t.Error("UnmarshalJSON accepted a number")
	}
}
