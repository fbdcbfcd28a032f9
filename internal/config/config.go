package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fleetprof/fleetprof/internal/relabel"
	"github.com/fleetprof/fleetprof/internal/selector"
)

// MaxSize is the largest config document Parse accepts, in bytes.
const MaxSize = 1 << 20

// Upload protocols.
const (
	// ProtocolParca is Parca's ProfileStoreService/WriteRaw over gRPC.
	ProtocolParca = "parca"
	// ProtocolPyroscope is Pyroscope's HTTP push/ingest API.
	ProtocolPyroscope = "pyroscope"
)

// Defaults and limits of the sampling section.
const (
	DefaultFrequencyHz = 19
	MinFrequencyHz     = 1
	MaxFrequencyHz     = 1000
	DefaultDuration    = 10 * time.Second
	MinDuration        = time.Second
	MaxDuration        = 5 * time.Minute
)

// Limits on list sizes, so one config cannot make every agent do
// unbounded work per target.
const (
	MaxUnits          = 1000 // targets.systemd.units
	MaxNamespaces     = 1000 // targets.kubernetes.namespaces
	MaxRelabelConfigs = 1000 // relabel_configs
	MaxExternalLabels = 64   // external_labels
)

// Config is one remote config (DESIGN.md §6). Parse returns it validated
// and normalized; a Config built in Go should start from Default and be
// checked with Validate.
type Config struct {
	Sampling Sampling `yaml:"sampling" json:"sampling"`
	Targets  Targets  `yaml:"targets,omitempty" json:"targets"`
	// RelabelConfigs run per target, in order, with Prometheus semantics.
	RelabelConfigs []relabel.Config `yaml:"relabel_configs,omitempty" json:"relabel_configs,omitempty"`
	// ExternalLabels are added to every profile the agent uploads.
	ExternalLabels map[string]string `yaml:"external_labels,omitempty" json:"external_labels,omitempty"`
	Upload         Upload            `yaml:"upload" json:"upload"`
}

// Sampling is how often and how long the agent samples per profile.
type Sampling struct {
	// FrequencyHz is the per-CPU sampling rate, in Hz; 1..1000, default 19.
	FrequencyHz int `yaml:"frequency_hz" json:"frequency_hz"`
	// Duration is the profile window; 1s..5m, default 10s.
	Duration Duration `yaml:"duration" json:"duration"`
}

// Targets select the processes to profile. With none set the agent
// profiles every process on the host.
type Targets struct {
	Systemd    SystemdTargets    `yaml:"systemd,omitempty" json:"systemd"`
	Kubernetes KubernetesTargets `yaml:"kubernetes,omitempty" json:"kubernetes"`
	Processes  ProcessTargets    `yaml:"processes,omitempty" json:"processes"`
}

// SystemdTargets select systemd units.
type SystemdTargets struct {
	// Units are unit name globs (path.Match syntax), e.g. "docker-*.scope".
	Units []string `yaml:"units,flow,omitempty" json:"units,omitempty"`
}

// KubernetesTargets select pods on the agent's node.
type KubernetesTargets struct {
	// Namespaces limits pods to these namespaces; empty means all.
	Namespaces []string `yaml:"namespaces,flow,omitempty" json:"namespaces,omitempty"`
	// PodSelector is a Kubernetes label selector over pod labels.
	PodSelector string `yaml:"pod_selector,omitempty" json:"pod_selector,omitempty"`
}

// ProcessTargets select processes by name.
type ProcessTargets struct {
	// Comm is an unanchored RE2 regexp over /proc/<pid>/comm.
	Comm string `yaml:"comm,omitempty" json:"comm,omitempty"`
	// Exe is an unanchored RE2 regexp over the executable path.
	Exe string `yaml:"exe,omitempty" json:"exe,omitempty"`
}

// Upload is where the agent sends profiles.
type Upload struct {
	// Address is host:port; empty means the fleet the agent enrolled with.
	Address string `yaml:"address" json:"address"`
	// Protocol is ProtocolParca (default) or ProtocolPyroscope.
	Protocol string `yaml:"protocol" json:"protocol"`
	// Insecure turns TLS off for Address.
	Insecure bool `yaml:"insecure" json:"insecure"`
}

// Default returns the config used when a document leaves a field out:
// 19 Hz, 10 s windows, no selectors (whole host), upload to the fleet
// over the Parca protocol.
func Default() *Config {
	return &Config{
		Sampling: Sampling{FrequencyHz: DefaultFrequencyHz, Duration: Duration(DefaultDuration)},
		Upload:   Upload{Protocol: ProtocolParca},
	}
}

// Parse decodes one YAML document strictly (unknown fields are errors),
// starting from Default, then validates and normalizes it. Errors wrap
// ErrSyntax (naming the line) or are the errors.Join of every
// *ValidationError found. An empty document is the default config.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: document is %d bytes, more than %d", ErrSyntax, len(data), MaxSize)
	}
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(c); {
	case errors.Is(err, io.EOF):
		// No document at all: the defaults.
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
			}
			return nil, fmt.Errorf("%w: line %d: more than one YAML document", ErrSyntax, extra.Line)
		}
	}
	if err := checkNullItems(data); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := c.normalized()
	return &n, nil
}

// checkNullItems rejects empty list items ("- " or null), which yaml.v3
// would silently drop from a list of rules or globs.
func checkNullItems(data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%w: %w", ErrSyntax, err)
	}
	var walk func(n *yaml.Node, depth int) error
	walk = func(n *yaml.Node, depth int) error {
		if n == nil || depth > 64 {
			return nil
		}
		for _, child := range n.Content {
			item := child
			if item.Kind == yaml.AliasNode && item.Alias != nil {
				item = item.Alias
			}
			if n.Kind == yaml.SequenceNode && item.Kind == yaml.ScalarNode && item.ShortTag() == "!!null" {
				return fmt.Errorf("%w: line %d: empty list item", ErrSyntax, child.Line)
			}
			if err := walk(child, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(&doc, 0)
}

// HasSelectors reports whether any target selector is set (unit globs,
// namespaces, pod selector, comm or exe regexp). Without one the agent
// profiles the whole host.
func (c *Config) HasSelectors() bool {
	t := &c.Targets
	return len(t.Systemd.Units) > 0 || len(t.Kubernetes.Namespaces) > 0 ||
		t.Kubernetes.PodSelector != "" || t.Processes.Comm != "" || t.Processes.Exe != ""
}

// normalized returns a deep copy in canonical form: unit globs and
// namespaces sorted and deduplicated, the pod selector in its canonical
// text, empty slices and maps as nil. It assumes c is valid.
func (c *Config) normalized() Config {
	n := *c
	n.Targets.Systemd.Units = sortedSet(c.Targets.Systemd.Units)
	n.Targets.Kubernetes.Namespaces = sortedSet(c.Targets.Kubernetes.Namespaces)
	if s, err := selector.Parse(c.Targets.Kubernetes.PodSelector); err == nil {
		n.Targets.Kubernetes.PodSelector = s.String()
	}
	n.RelabelConfigs = nil
	for _, r := range c.RelabelConfigs {
		r.SourceLabels = slices.Clone(r.SourceLabels)
		if len(r.SourceLabels) == 0 {
			r.SourceLabels = nil
		}
		n.RelabelConfigs = append(n.RelabelConfigs, r)
	}
	n.ExternalLabels = nil
	if len(c.ExternalLabels) > 0 {
		n.ExternalLabels = maps.Clone(c.ExternalLabels)
	}
	return n
}

func sortedSet(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

// canonicalJSON is the encoding Hash digests: the normalized config as JSON
// (struct fields in declaration order, map keys sorted).
func (c *Config) canonicalJSON() []byte {
	n := c.normalized()
	b, err := json.Marshal(&n)
	if err != nil { // unreachable: every field encodes
		return nil
	}
	return b
}

// Hash returns the SHA-256 of the canonical encoding, so two documents that
// mean the same config (key order, comments, defaults spelled out or not,
// unit and namespace order, pod selector spacing) hash equal. It is the
// hash sent with the OpAMP AgentRemoteConfig.
func (c *Config) Hash() []byte {
	sum := sha256.Sum256(append([]byte("fleetprof-config-v1\n"), c.canonicalJSON()...))
	return sum[:]
}

// HashString returns Hash in lower-case hex.
func (c *Config) HashString() string { return hex.EncodeToString(c.Hash()) }

// Marshal returns the canonical YAML of c: every section in schema order,
// defaults spelled out, normalized as Hash sees it. Parse(Marshal(c))
// yields a config with the same hash.
func (c *Config) Marshal() ([]byte, error) {
	n := c.normalized()
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}
