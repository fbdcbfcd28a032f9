package discovery

import (
	"context"
	"errors"
)

// Errors returned by this package.
var (
	// ErrSelector means a target selector or process regex is invalid; the
	// wrapping error names the config field.
	ErrSelector = errors.New("invalid target selector")
	// ErrNotSupported means the platform has no cgroups or /proc to read.
	ErrNotSupported = errors.New("discovery not supported on this platform")
)

// Target sources.
const (
	SourceKubernetes = "kubernetes"
	SourceSystemd    = "systemd"
	SourceProcess    = "process"
)

// Label names set on targets. Labels starting with "__" (such as
// "__meta_kubernetes_pod_label_app") are visible to relabeling and dropped
// after it.
const (
	LabelNode        = "node"
	LabelNamespace   = "namespace"
	LabelPod         = "pod"
	LabelContainer   = "container"
	LabelSystemdUnit = "systemd_unit"
	LabelPID         = "pid"
	LabelComm        = "comm"
	LabelExe         = "exe"

	// MetaContainerID holds the runtime's container id ("containerd://<id>").
	MetaContainerID = "__meta_kubernetes_pod_container_id"
	// MetaPodLabelPrefix prefixes each pod label, its name sanitized.
	MetaPodLabelPrefix = "__meta_kubernetes_pod_label_"
)

// Target is one thing to profile: a container, a unit or a process.
type Target struct {
	// Labels before relabeling, including __meta_* labels.
	Labels map[string]string
	// Source is SourceKubernetes, SourceSystemd or SourceProcess.
	Source string
	// Cgroups are cgroup paths, relative to a hierarchy root, whose processes
	// (and those of their descendants) belong to the target.
	Cgroups []string
	// PIDs are the processes of a process target.
	PIDs []int
}

// Discoverer finds targets of one source.
type Discoverer interface {
	// Run sends the full set of targets on up first, then the full set again
	// on every change. It returns when ctx ends and never closes up.
	Run(ctx context.Context, up chan<- []Target) error
}
