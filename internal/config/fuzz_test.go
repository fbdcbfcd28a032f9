package config

import (
	"bytes"
	"os"
	"testing"
)

// FuzzParse checks that Parse never panics on any input, and that every
// config it accepts survives Marshal and Parse with the same hash and the
// same canonical text.
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
	})
}
