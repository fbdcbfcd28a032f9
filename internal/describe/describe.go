package describe

import (
	"sort"
	"strings"

	"github.com/open-telemetry/opamp-go/protobufs"
)

// Attribute keys. Standard OpenTelemetry resource keys where one exists.
const (
	KeyServiceName    = "service.name"
	KeyServiceVersion = "service.version"
	KeyInstanceID     = "service.instance.id"
	KeyHostName       = "host.name"
	KeyOSType         = "os.type"
	KeyKernel         = "os.version"
	KeyArch           = "host.arch"
	KeyPlatform       = "fleetprof.platform" // kubernetes | systemd | host
	KeyNode           = "k8s.node.name"
	KeyCluster        = "k8s.cluster.name"
	KeyImage          = "container.image.name"
	labelPrefix       = "fleetprof.label."
	ServiceName       = "fleetprof-agent"
)

// Platforms an agent reports.
const (
	PlatformKubernetes = "kubernetes"
	PlatformSystemd    = "systemd"
	PlatformHost       = "host"
)

// Agent is what an agent says about itself.
type Agent struct {
	InstanceID string
	Version    string
	Hostname   string
	OS         string
	Kernel     string
	Arch       string
	Platform   string
	Node       string
	Cluster    string
	Image      string
	Labels     map[string]string // custom labels set on the agent
}

func kv(k, v string) *protobufs.KeyValue {
	return &protobufs.KeyValue{Key: k, Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: v}}}
}

// Encode builds the AgentDescription the agent sends.
func Encode(a Agent) *protobufs.AgentDescription {
	d := &protobufs.AgentDescription{
		IdentifyingAttributes: []*protobufs.KeyValue{
			kv(KeyServiceName, ServiceName), kv(KeyServiceVersion, a.Version), kv(KeyInstanceID, a.InstanceID),
		},
	}
	add := func(k, v string) {
		if v != "" {
			d.NonIdentifyingAttributes = append(d.NonIdentifyingAttributes, kv(k, v))
		}
	}
	add(KeyHostName, a.Hostname)
	add(KeyOSType, a.OS)
	add(KeyKernel, a.Kernel)
	add(KeyArch, a.Arch)
	add(KeyPlatform, a.Platform)
	add(KeyNode, a.Node)
	add(KeyCluster, a.Cluster)
	add(KeyImage, a.Image)
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(labelPrefix+k, a.Labels[k])
	}
	return d
}

// Attributes flattens a description into a map of string attributes.
func Attributes(d *protobufs.AgentDescription) map[string]string {
	out := map[string]string{}
	if d == nil {
		return out
	}
	for _, list := range [][]*protobufs.KeyValue{d.IdentifyingAttributes, d.NonIdentifyingAttributes} {
		for _, a := range list {
			if a == nil || a.Value == nil {
				continue
			}
			if s, ok := a.Value.Value.(*protobufs.AnyValue_StringValue); ok {
				out[a.Key] = s.StringValue
			}
		}
	}
	return out
}

// Decode reads what Encode wrote (unknown attributes are ignored).
func Decode(d *protobufs.AgentDescription) Agent {
	m := Attributes(d)
	a := Agent{
		InstanceID: m[KeyInstanceID], Version: m[KeyServiceVersion], Hostname: m[KeyHostName],
		OS: m[KeyOSType], Kernel: m[KeyKernel], Arch: m[KeyArch], Platform: m[KeyPlatform],
		Node: m[KeyNode], Cluster: m[KeyCluster], Image: m[KeyImage], Labels: map[string]string{},
	}
	for k, v := range m {
		if strings.HasPrefix(k, labelPrefix) {
			a.Labels[strings.TrimPrefix(k, labelPrefix)] = v
		}
	}
	return a
}

// Labels returns the selector labels of an agent: its custom labels, then
// the well-known ones (platform, node, cluster, version, os, kernel,
// hostname), which win over custom labels of the same name.
func (a Agent) SelectorLabels() map[string]string {
	out := map[string]string{}
	for k, v := range a.Labels {
		out[k] = v
	}
	set := func(k, v string) {
		if v != "" {
			out[k] = v
		}
	}
	set("platform", a.Platform)
	set("node", a.Node)
	set("cluster", a.Cluster)
	set("version", a.Version)
	set("os", a.OS)
	set("kernel", a.Kernel)
	set("hostname", a.Hostname)
	set("arch", a.Arch)
	return out
}
