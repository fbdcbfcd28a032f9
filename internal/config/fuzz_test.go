package config

import (
	"bytes"
	"os"
	"testing"
)

// FuzzParse checks that Parse never panics on any input, that every
// config it accepts survives Marshal and Parse with the same hash and the
// same canonical text, and that its JSON (what the fleet pushes) reads
// back to the same hash with ParseJSON and with Parse (an agent that only
// knows YAML).
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/design.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(""))
	f.Add([]byte("sampling: {frequency_hz: 99, duration: 1m}\n"))
	f.Add([]byte("relabel_configs:\n- {source_labels: [a, b], separator: '', regex: '(.*)x', target_label: '${1}', replacement: ''}\n- {action: labelmap, regex: __meta_(.+)}\n"))
	f.Add([]byte("external_labels: {a: \"\\u00e9\\n\", b: '2'}\nupload: {address: '[::1]:1', protocol: pyroscope}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed config: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal()) failed: %v\ninput: %q\nmarshal: %q", err, data, out)
		}
		if !bytes.Equal(back.Hash(), c.Hash()) {
			t.Fatalf("hash changed in round trip\ninput: %q\nmarshal: %q", data, out)
		}
		again, err := back.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("Marshal not stable: %q vs %q", out, again)
		}
		checkJSON(t, c, data)
	})
}

// checkJSON fails unless c's JSON reads back to c's hash with both parsers.
func checkJSON(t *testing.T, c *Config, input []byte) {
	t.Helper()
	js := c.JSON()
	for name, parse := range map[string]func([]byte) (*Config, error){"ParseJSON": ParseJSON, "Parse": Parse} {
		back, err := parse(js)
		if err != nil {
			t.Fatalf("%s(JSON()) failed: %v\ninput: %q\njson: %s", name, err, input, js)
		}
		if !bytes.Equal(back.Hash(), c.Hash()) {
			t.Fatalf("%s(JSON()): hash changed\ninput: %q\njson: %s", name, input, js)
		}
	}
}

// FuzzParseJSON checks that ParseJSON never panics on any input and that
// every config it accepts reads back from its JSON to the same hash, with
// ParseJSON and with Parse.
func FuzzParseJSON(f *testing.F) {
	if b, err := os.ReadFile("testdata/design.yaml"); err == nil {
		if c, err := Parse(b); err == nil {
			f.Add(c.JSON())
		}
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"sampling":{"frequency_hz":49,"duration":"1m"},"external_labels":{"a":"\u00e9\n<&>","b":"null"}}`))
	f.Add([]byte(`{"relabel_configs":[{"source_labels":["a","b"],"separator":"","regex":"(.*)x","target_label":"${1}","replacement":""},{"action":"LabelMap","regex":"__meta_(.+)"}]}`))
	f.Add([]byte(`{"targets":{"systemd":{"units":["b*","a",null]},"kubernetes":{"pod_selector":"tier in (web), !canary"}}}`))
	f.Add([]byte(`{"upload":{"address":"[::1]:1","protocol":"pyroscope","insecure":true}} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseJSON(data)
		if err != nil {
			return
		}
		checkJSON(t, c, data)
	})
}
