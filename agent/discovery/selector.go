package discovery

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Selector says which targets are profiled. The zero Selector selects the
// whole host: every process is its own target.
type Selector struct {
	// Namespaces are the Kubernetes namespaces whose pods are selected; empty
	// means all (when PodSelector is set).
	Namespaces []string
	// PodSelector is a Kubernetes label selector over pod labels
	// ("app=api,tier!=db").
	PodSelector string
	// Units are systemd unit name globs ("nginx.service", "docker-*.scope").
	Units []string
	// Comm and Exe are regular expressions (RE2) over a process's comm and
	// executable path; a process matching either is selected.
	Comm, Exe string
}

// Selection is a compiled Selector. A nil *Selection selects the whole host.
type Selection struct {
	namespaces []string
	pods       labels.Selector // over sanitized label names; nil if unset
	kube       bool
	units      []string
	comm, exe  *regexp.Regexp
}

// Compile validates s. Errors wrap ErrSelector and name the config field
// (targets.kubernetes.pod_selector, targets.systemd.units[1], …). It returns
// nil, nil for the zero Selector (whole host).
func (s Selector) Compile() (*Selection, error) {
	sel := &Selection{}
	for i, ns := range s.Namespaces {
		if ns == "" || strings.ContainsAny(ns, " /") {
			return nil, fmt.Errorf("targets.kubernetes.namespaces[%d] %q: %w", i, ns, ErrSelector)
		}
		sel.namespaces = append(sel.namespaces, ns)
	}
	if s.PodSelector != "" {
		parsed, err := labels.Parse(s.PodSelector)
		if err != nil {
			return nil, fmt.Errorf("targets.kubernetes.pod_selector %q: %w: %w", s.PodSelector, ErrSelector, err)
		}
		sel.pods, err = sanitizeSelector(parsed)
		if err != nil {
			return nil, fmt.Errorf("targets.kubernetes.pod_selector %q: %w: %w", s.PodSelector, ErrSelector, err)
		}
	}
	sel.kube = len(sel.namespaces) > 0 || sel.pods != nil
	for i, u := range s.Units {
		if _, err := path.Match(u, ""); err != nil || u == "" || strings.Contains(u, "/") {
			return nil, fmt.Errorf("targets.systemd.units[%d] %q: %w: bad glob", i, u, ErrSelector)
		}
		sel.units = append(sel.units, u)
	}
	var err error
	if s.Comm != "" {
		if sel.comm, err = regexp.Compile(s.Comm); err != nil {
			return nil, fmt.Errorf("targets.processes.comm %q: %w: %w", s.Comm, ErrSelector, err)
		}
	}
	if s.Exe != "" {
		if sel.exe, err = regexp.Compile(s.Exe); err != nil {
			return nil, fmt.Errorf("targets.processes.exe %q: %w: %w", s.Exe, ErrSelector, err)
		}
	}
	if !sel.kube && len(sel.units) == 0 && sel.comm == nil && sel.exe == nil {
		return nil, nil
	}
	return sel, nil
}

// sanitizeSelector rewrites each requirement's key the way pod labels are
// sanitized in MetaPodLabelPrefix labels, so that the selector matches them.
func sanitizeSelector(s labels.Selector) (labels.Selector, error) {
	reqs, _ := s.Requirements()
	out := labels.NewSelector()
	for _, r := range reqs {
		vals := r.Values().UnsortedList()
		slices.Sort(vals)
		op := r.Operator()
		if op == selection.DoubleEquals {
			op = selection.Equals
		}
		nr, err := labels.NewRequirement(SanitizeLabelName(r.Key()), op, vals)
		if err != nil {
			return nil, fmt.Errorf("requirement on %q: %w", r.Key(), err)
		}
		out = out.Add(*nr)
	}
	return out, nil
}

// Units returns the unit globs; nil for a nil Selection.
func (s *Selection) Units() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.units)
}

// Kubernetes reports whether the selection names namespaces or pod labels.
func (s *Selection) Kubernetes() bool { return s != nil && s.kube }

// matchPod reports whether a Kubernetes target's labels are selected.
func (s *Selection) matchPod(l map[string]string) bool {
	if !s.kube {
		return false
	}
	if len(s.namespaces) > 0 && !slices.Contains(s.namespaces, l[LabelNamespace]) {
		return false
	}
	if s.pods == nil {
		return true
	}
	podLabels := labels.Set{}
	for k, v := range l {
		if name, ok := strings.CutPrefix(k, MetaPodLabelPrefix); ok {
			podLabels[name] = v
		}
	}
	return s.pods.Matches(podLabels)
}

// MatchUnit reports whether a unit name matches one of the globs.
func (s *Selection) MatchUnit(unit string) bool {
	if s == nil {
		return false
	}
	for _, g := range s.units {
		if ok, _ := path.Match(g, unit); ok {
			return true
		}
	}
	return false
}

// processes reports whether a process regex is set.
func (s *Selection) processes() bool { return s.comm != nil || s.exe != nil }

// matchProcess reports whether comm or exe match their regex.
func (s *Selection) matchProcess(comm, exe string) bool {
	return (s.comm != nil && s.comm.MatchString(comm)) || (s.exe != nil && exe != "" && s.exe.MatchString(exe))
}

// SanitizeLabelName maps a Kubernetes label name to a Prometheus label name
// suffix: every character outside [a-zA-Z0-9_] becomes '_'.
func SanitizeLabelName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
