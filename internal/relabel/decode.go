package relabel

import (
	"fmt"
	"strings"

	"github.com/go-json-experiment/json"
	"go.yaml.in/yaml/v3"
)

// knownFields are the YAML/JSON keys of Config.
var knownFields = map[string]bool{
	"source_labels": true, "separator": true, "regex": true, "modulus": true,
	"target_label": true, "replacement": true, "action": true,
}

// UnmarshalYAML decodes a rule starting from DefaultConfig, rejecting
// unknown fields (yaml.v3 does not pass KnownFields into custom
// unmarshalers, so the check is done here) and lower-casing the action.
func (c *Config) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.MappingNode {
		var unknown []string
		for i := 0; i+1 < len(node.Content); i += 2 {
			k := node.Content[i]
			if !knownFields[k.Value] {
				unknown = append(unknown, fmt.Sprintf("line %d: field %s not found in type relabel.Config", k.Line, k.Value))
			}
		}
		if len(unknown) > 0 {
			return &yaml.TypeError{Errors: unknown}
		}
	}
	type plain Config
	d := DefaultConfig()
	if err := node.Decode((*plain)(&d)); err != nil {
		return err
	}
	d.Action = Action(strings.ToLower(string(d.Action)))
	*c = d
	return nil
}

// UnmarshalJSON decodes a rule starting from DefaultConfig, strictly
// (unknown, duplicate or wrongly-cased names are errors), and lower-cases
// the action.
func (c *Config) UnmarshalJSON(b []byte) error {
	type plain Config
	d := DefaultConfig()
	if err := json.Unmarshal(b, (*plain)(&d), json.RejectUnknownMembers(true)); err != nil {
		return fmt.Errorf("decode relabel config: %w", err)
	}
	d.Action = Action(strings.ToLower(string(d.Action)))
	*c = d
	return nil
}
