package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/fleetprof/fleetprof/agent/discovery"
)

// Errors returned by this package.
var (
	// ErrNotInCluster means there is neither a kubeconfig nor an in-cluster
	// service account; the agent turns Kubernetes discovery off.
	ErrNotInCluster = errors.New("not running in a Kubernetes cluster")
	// ErrNoNode means Options.Node is empty.
	ErrNoNode = errors.New("kubernetes discovery needs the node name")
)

// RESTConfig returns the client config: from kubeconfig if set, else the
// in-cluster one. Outside a cluster it returns an error wrapping
// ErrNotInCluster.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, ErrNotInCluster
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w: %w", ErrNotInCluster, err)
	}
	return cfg, nil
}

// Options configure a Discoverer.
type Options struct {
	// Client talks to the API server; nil means one made from Config.
	Client kubernetes.Interface
	// Config is used when Client is nil (see RESTConfig).
	Config *rest.Config
	// Node is this node's name; only pods with spec.nodeName=Node are
	// watched. Required.
	Node string
	// Cgroups is the hierarchy searched for the containers' cgroups; nil
	// means discovery.DetectCgroupFS("").
	Cgroups *discovery.CgroupFS
	// Resync is how often cgroups are searched again and the full set sent
	// even without pod changes; 0 means 10s.
	Resync time.Duration
	// Debounce is how long pod events are gathered before one update is
	// sent; 0 means 100ms.
	Debounce time.Duration
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
}

// Discoverer sends one target per running container of the pods on the node.
type Discoverer struct {
	opts Options
	// paths is the last cgroup search: container id → cgroup paths. Only
	// Run's goroutine uses it.
	paths map[string][]string
}

// New checks opts and returns a Discoverer.
func New(opts Options) (*Discoverer, error) {
	if opts.Client == nil && opts.Config != nil {
		c, err := kubernetes.NewForConfig(opts.Config)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		opts.Client = c
	}
	if opts.Client == nil {
		return nil, errors.New("kubernetes discovery: no client and no config")
	}
	if opts.Node == "" {
		return nil, ErrNoNode
	}
	if opts.Cgroups == nil {
		fs, err := discovery.DetectCgroupFS("")
		if err != nil {
			return nil, fmt.Errorf("kubernetes discovery: %w", err)
		}
		opts.Cgroups = fs
	}
	if opts.Resync <= 0 {
		opts.Resync = 10 * time.Second
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Discoverer{opts: opts}, nil
}

// Run watches the node's pods until ctx ends. It sends the full set once the
// informer has synced, then again after every change and every Resync.
func (d *Discoverer) Run(ctx context.Context, up chan<- []discovery.Target) error {
	factory := informers.NewSharedInformerFactoryWithOptions(d.opts.Client, 0,
		informers.WithTweakListOptions(func(o *v1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", d.opts.Node).String()
		}))
	inf := factory.Core().V1().Pods()
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return fmt.Errorf("add pod event handler: %w", err)
	}
	lister := inf.Lister()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		factory.Start(ctx.Done())
	}()
	defer func() {
		factory.Shutdown()
		wg.Wait()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil // ctx ended
	}

	tick := time.NewTicker(d.opts.Resync)
	defer tick.Stop()
	rescan := true
	for {
		pods, err := lister.List(labels.Everything())
		if err != nil {
			return fmt.Errorf("list pods from cache: %w", err)
		}
		targets := d.targets(pods, rescan)
		rescan = false
		select {
		case up <- targets:
		case <-ctx.Done():
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			rescan = true
		case <-changed:
			// Gather a burst of events into one update.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d.opts.Debounce):
			}
		}
	}
}

// targets builds one target per running container, ordered by namespace,
// pod and container. The cgroup hierarchy is searched again when rescan is
// set or a container's cgroup is not known yet.
func (d *Discoverer) targets(pods []*corev1.Pod, rescan bool) []discovery.Target {
	if !rescan && d.paths != nil {
	search:
		for _, p := range pods {
			for _, cs := range p.Status.ContainerStatuses {
				if id, ok := ContainerID(cs.ContainerID); ok && cs.State.Terminated == nil && len(d.paths[id]) == 0 {
					rescan = true
					break search
				}
			}
		}
	}
	if rescan || d.paths == nil {
		paths, err := d.opts.Cgroups.Containers()
		if err != nil {
			d.opts.Logger.Warn("search container cgroups", zap.Error(err))
		}
		d.paths = paths
	}
	paths := d.paths
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Namespace != pods[j].Namespace {
			return pods[i].Namespace < pods[j].Namespace
		}
		return pods[i].Name < pods[j].Name
	})
	var out []discovery.Target
	for _, p := range pods {
		if p.Spec.NodeName != d.opts.Node || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		base := PodLabels(p)
		statuses := slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses)
		for _, cs := range statuses {
			if cs.ContainerID == "" || cs.State.Terminated != nil {
				continue
			}
			l := maps.Clone(base)
			l[discovery.LabelContainer] = cs.Name
			l["__meta_kubernetes_pod_container_name"] = cs.Name
			l[discovery.MetaContainerID] = cs.ContainerID
			l["__meta_kubernetes_pod_container_image"] = cs.Image
			t := discovery.Target{Labels: l, Source: discovery.SourceKubernetes}
			if id, ok := ContainerID(cs.ContainerID); ok {
				t.Cgroups = slices.Clone(paths[id])
			}
			out = append(out, t)
		}
	}
	return out
}

// ContainerID returns the id part of a status containerID
// ("containerd://<id>", "cri-o://<id>", "docker://<id>").
func ContainerID(s string) (string, bool) {
	for i := 0; i+3 <= len(s); i++ {
		if s[i:i+3] == "://" {
			return s[i+3:], i+3 < len(s)
		}
	}
	return s, s != ""
}

// PodLabels returns the labels of a pod's targets before the container ones:
// node, namespace and pod, and Prometheus-style __meta_kubernetes_* labels
// (pod labels and annotations with sanitized names).
func PodLabels(p *corev1.Pod) map[string]string {
	l := map[string]string{
		discovery.LabelNode:                     p.Spec.NodeName,
		discovery.LabelNamespace:                p.Namespace,
		discovery.LabelPod:                      p.Name,
		"__meta_kubernetes_namespace":           p.Namespace,
		"__meta_kubernetes_pod_name":            p.Name,
		"__meta_kubernetes_pod_uid":             string(p.UID),
		"__meta_kubernetes_pod_node_name":       p.Spec.NodeName,
		"__meta_kubernetes_pod_phase":           string(p.Status.Phase),
		"__meta_kubernetes_pod_ip":              p.Status.PodIP,
		"__meta_kubernetes_pod_host_ip":         p.Status.HostIP,
		"__meta_kubernetes_pod_service_account": p.Spec.ServiceAccountName,
	}
	for k, v := range p.Labels {
		n := discovery.SanitizeLabelName(k)
		l[discovery.MetaPodLabelPrefix+n] = v
		l["__meta_kubernetes_pod_labelpresent_"+n] = "true"
	}
	for k, v := range p.Annotations {
		n := discovery.SanitizeLabelName(k)
		l["__meta_kubernetes_pod_annotation_"+n] = v
		l["__meta_kubernetes_pod_annotationpresent_"+n] = "true"
	}
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			l["__meta_kubernetes_pod_controller_kind"] = o.Kind
			l["__meta_kubernetes_pod_controller_name"] = o.Name
		}
	}
	return l
}
