package config

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// jsonDocs are YAML documents whose canonical JSON the tests read back.
func jsonDocs(t *testing.T) []string {
	t.Helper()
	design, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		"",
		string(design),
		"sampling: {frequency_hz: 49}\nexternal_labels: {pad: \"" + strings.Repeat("x", 900) + "\"}\n",
		"relabel_configs:\n- {source_labels: [a, b], separator: '', regex: '(.*)x', target_label: '${1}', replacement: ''}\n- {action: LabelMap, regex: __meta_(.+)}\n",
		"external_labels: {a: \"\\u00e9\\n<&>\", b: '2', c: \"null\", d: \"\\u0085\\u0080\\u009f\\u007f\\u2028\\ufeff\\U0001F600\"}\nupload: {address: '[::1]:1', protocol: pyroscope, insecure: true}\n",
		"targets: {kubernetes: {namespaces: [b, a, b], pod_selector: 'tier in (web, api), !canary'}, processes: {exe: '/usr/bin/.*'}}\n",
	}
}

// TestJSONReadsBackToTheSameConfig: what the fleet pushes (JSON) is the
// config the operator wrote, for an agent that reads JSON and for one that
// only knows YAML.
func TestJSONReadsBackToTheSameConfig(t *testing.T) {
	for _, doc := range jsonDocs(t) {
		c := mustParse(t, doc)
		body := c.JSON()
		got, err := ParseJSON(body)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", body, err)
		}
		if diff := cmp.Diff(c, got); diff != "" {
			t.Errorf("ParseJSON(JSON()) of %q (-want +got):\n%s", doc, diff)
		}
		if !bytes.Equal(got.Hash(), c.Hash()) {
			t.Errorf("ParseJSON(JSON()) of %q: hash changed", doc)
		}
		old, err := Parse(body)
		if err != nil {
			t.Fatalf("Parse (YAML) of the JSON %s: %v", body, err)
		}
		if !bytes.Equal(old.Hash(), c.Hash()) {
			t.Errorf("Parse (YAML) of the JSON of %q: hash changed", doc)
		}
		if bytes.ContainsFunc(body, func(r rune) bool { return r >= 0x7f && r < 0xa0 }) {
			t.Errorf("JSON() of %q holds a control character YAML does not allow: %q", doc, body)
		}
		viaType, err := ParseAs("application/json; charset=utf-8", body)
		if err != nil || !bytes.Equal(viaType.Hash(), c.Hash()) {
			t.Errorf("ParseAs(json) of %q: %v", doc, err)
		}
	}
}

func TestParseJSONStartsFromDefaults(t *testing.T) {
	c, err := ParseJSON([]byte(`{"sampling":{"frequency_hz":49},"relabel_configs":[{"target_label":"x"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Sampling.Duration != Duration(10*time.Second) || c.Upload.Protocol != ProtocolParca {
		t.Errorf("defaults not kept: %+v", c)
	}
	if r := c.RelabelConfigs[0]; r.Regex != "(.*)" || r.Action != "replace" || r.Replacement != "$1" {
		t.Errorf("relabel defaults not kept: %+v", r)
	}
	if c, err := ParseJSON([]byte(`{}`)); err != nil || !bytes.Equal(c.Hash(), Default().Hash()) {
		t.Errorf("ParseJSON({}) = %v, %v; want the defaults", c, err)
	}
}

func TestParseJSONErrors(t *testing.T) {
	syntax := []struct{ name, doc, want string }{
		{"not JSON", "sampling: {frequency_hz: 49}\n", "invalid character"},
		{"empty", "", "EOF"},
		{"not an object", `[]`, "array"},
		{"unknown field", `{"sampling":{"rate":5}}`, "rate"},
		{"wrong case", `{"Sampling":{"frequency_hz":5}}`, "Sampling"},
		{"duplicate name", `{"sampling":{"frequency_hz":5,"frequency_hz":6}}`, "duplicate"},
		{"null member", `{"upload":null}`, `null at "/upload"`},
		{"null list item", `{"targets":{"systemd":{"units":["a.service",null]}}}`, `null at "/targets/systemd/units/1"`},
		{"null relabel rule", `{"relabel_configs":[null]}`, `null at "/relabel_configs/0"`},
		{"trailing data", `{}{}`, "after top-level value"},
		{"wrong type", `{"sampling":{"frequency_hz":"5"}}`, "frequency_hz"},
		{"bad duration", `{"sampling":{"duration":"soon"}}`, "duration"},
		{"unknown relabel field", `{"relabel_configs":[{"regx":"a"}]}`, "regx"},
		{"duplicate relabel field", `{"relabel_configs":[{"regex":"a","regex":"b"}]}`, "duplicate"},
		{"invalid UTF-8", "{\"external_labels\":{\"a\":\"\xff\"}}", "UTF-8"},
		{"too large", `{"external_labels":{"a":"` + strings.Repeat("x", MaxSize) + `"}}`, "more than"},
	}
	for _, tc := range syntax {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseJSON([]byte(tc.doc))
			if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseJSON(%.60q) = %v, want ErrSyntax mentioning %q", tc.doc, err, tc.want)
			}
		})
	}
	_, err := ParseJSON([]byte(`{"sampling":{"frequency_hz":0},"targets":{"systemd":{"units":[""]}}}`))
	var ve *ValidationError
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) || !strings.Contains(err.Error(), "sampling.frequency_hz") || !strings.Contains(err.Error(), "targets.systemd.units[0]") {
		t.Fatalf("out-of-range values: %v, want both validation errors", err)
	}
	if _, err := ParseJSON([]byte(`{"external_labels":{"note":"null"}}`)); err != nil {
		t.Errorf("the string \"null\" is a value: %v", err)
	}
}

func TestParseAsContentTypes(t *testing.T) {
	yamlDoc := []byte("sampling: {frequency_hz: 49}\n")
	for _, ct := range []string{"application/json", "Application/JSON", "application/json; charset=utf-8"} {
		if !IsJSON(ct) {
			t.Errorf("IsJSON(%q) = false", ct)
		}
		if _, err := ParseAs(ct, yamlDoc); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseAs(%q, YAML) = %v, want the JSON parser's syntax error", ct, err)
		}
	}
	for _, ct := range []string{"", "application/yaml", "text/yaml", "application/jsonl", "weird;;"} {
		if IsJSON(ct) {
			t.Errorf("IsJSON(%q) = true", ct)
		}
		if c, err := ParseAs(ct, yamlDoc); err != nil || c.Sampling.FrequencyHz != 49 {
			t.Errorf("ParseAs(%q, YAML) = %v, %v", ct, c, err)
		}
	}
}
