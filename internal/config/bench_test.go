package config

import (
	"os"
	"strings"
	"testing"
)

// BenchmarkApply is what an agent does with a pushed config, per push:
// decode and validate it, hash it (to check the fleet's hash) and encode
// the effective config it reports. yaml: the canonical YAML pushed and
// reported as YAML (before the fleet pushed JSON); json: the canonical
// JSON, reported as JSON (now); json-as-yaml: an agent that only knows
// YAML given the JSON push. Two documents: the 1 KiB config of the scale
// bench and DESIGN.md's example.
func BenchmarkApply(b *testing.B) {
	design, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		b.Fatal(err)
	}
	docs := map[string]string{
		"scale":  "sampling: {frequency_hz: 49}\nexternal_labels: {pad: \"" + strings.Repeat("x", 900) + "\"}\n",
		"design": string(design),
	}
	for name, doc := range docs {
		c, err := Parse([]byte(doc))
		if err != nil {
			b.Fatal(err)
		}
		y, err := c.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		js := c.JSON()
		b.Run(name+"/yaml", func(b *testing.B) { applyYAML(b, y) })
		b.Run(name+"/json", func(b *testing.B) {
			b.SetBytes(int64(len(js)))
			for b.Loop() {
				c, err := ParseJSON(js)
				if err != nil {
					b.Fatal(err)
				}
				_ = c.Hash()
				_ = c.JSON()
			}
		})
		b.Run(name+"/json-as-yaml", func(b *testing.B) { applyYAML(b, js) })
	}
}

// applyYAML is an agent that knows only YAML applying doc: Parse, Hash,
// Marshal.
func applyYAML(b *testing.B, doc []byte) {
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		c, err := Parse(doc)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Hash()
		if _, err := c.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}
