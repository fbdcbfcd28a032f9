package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Content types of a config body on the wire (OpAMP AgentConfigFile).
const (
	// ContentTypeJSON is the canonical JSON (JSON), what the fleet pushes
	// and the agent reports as its effective config: decoding it costs an
	// agent a tenth of the YAML parse.
	ContentTypeJSON = "application/json"
	// ContentTypeYAML is a YAML document (Parse), what operators write.
	ContentTypeYAML = "application/yaml"
)

// ParseAs parses a body by its content type: ParseJSON for JSON
// ("application/json", parameters allowed), Parse for anything else. JSON
// is YAML too, so an agent that only knows Parse still reads a JSON body,
// to the same config and hash.
func ParseAs(contentType string, data []byte) (*Config, error) {
	if IsJSON(contentType) {
		return ParseJSON(data)
	}
	return Parse(data)
}

// IsJSON reports whether a content type names JSON.
func IsJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(contentType)), ";")
	}
	return mt == ContentTypeJSON
}

// ParseJSON decodes one JSON object strictly, starting from Default, then
// validates and normalizes it, as Parse does for YAML: unknown, duplicate
// or wrongly-cased names are errors, and so is null anywhere (leave a
// field out for its default; a null list item is an empty one). Errors
// wrap ErrSyntax (naming the JSON path) or are the errors.Join of every
// *ValidationError found.
func ParseJSON(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: document is %d bytes, more than %d", ErrSyntax, len(data), MaxSize)
	}
	// Only a document that spells "null" somewhere can hold a null: the
	// others (what the fleet sends) skip the token walk.
	if bytes.Contains(data, []byte("null")) {
		if err := checkNoNull(data); err != nil {
			return nil, err
		}
	}
	c := Default()
	if err := json.Unmarshal(data, c, json.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := c.normalized()
	return &n, nil
}

// checkNoNull rejects a JSON null anywhere in the document.
func checkNoNull(data []byte) error {
	dec := jsontext.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.ReadToken()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrSyntax, err)
		}
		if tok.Kind() == 'n' {
			return fmt.Errorf("%w: null at %q: leave the field out for its default (a null list item is an empty one)", ErrSyntax, dec.StackPointer())
		}
	}
}

// JSON returns the canonical JSON of c: struct fields in schema order,
// defaults spelled out, map keys sorted, no insignificant space, and every
// character YAML does not allow unescaped (DEL, the C1 controls, U+2028,
// U+2029, U+FEFF, U+FFFE, U+FFFF) escaped. ParseJSON reads it back to a
// config with the same hash, and so does Parse: an agent that only knows
// YAML reads what the fleet pushes.
func (c *Config) JSON() []byte { return yamlSafe(c.canonicalJSON()) }

// yamlSafe escapes, in a JSON text, the characters YAML does not allow
// unescaped. They can only be inside strings, where \uXXXX means the same
// in JSON and in YAML.
func yamlSafe(b []byte) []byte {
	i := slices.IndexFunc(b, func(c byte) bool { return c >= 0x7f })
	if i < 0 {
		return b // ASCII, the usual case
	}
	out := slices.Clone(b[:i])
	for len(b[i:]) > 0 {
		r, n := utf8.DecodeRune(b[i:])
		if r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029 || r == 0xfeff || r == 0xfffe || r == 0xffff {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}
