package config

import (
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/fleetprof/fleetprof/internal/relabel"
	"github.com/fleetprof/fleetprof/internal/selector"
)

// maxUnitName is systemd's UNIT_NAME_MAX.
const maxUnitName = 256

// Validate checks every field and returns nil or the errors.Join of one
// *ValidationError per problem, in schema order.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, invalid(path, format, args...)) }

	if f := c.Sampling.FrequencyHz; f < MinFrequencyHz || f > MaxFrequencyHz {
		add("sampling.frequency_hz", "must be between %d and %d, got %d", MinFrequencyHz, MaxFrequencyHz, f)
	}
	if d := time.Duration(c.Sampling.Duration); d < MinDuration || d > MaxDuration {
		add("sampling.duration", "must be between %s and %s, got %s", MinDuration, MaxDuration, d)
	}

	tooMany := func(path string, n, limit int) {
		if n > limit {
			add(path, "at most %d entries, got %d", limit, n)
		}
	}
	tooMany("targets.systemd.units", len(c.Targets.Systemd.Units), MaxUnits)
	tooMany("targets.kubernetes.namespaces", len(c.Targets.Kubernetes.Namespaces), MaxNamespaces)
	tooMany("relabel_configs", len(c.RelabelConfigs), MaxRelabelConfigs)
	tooMany("external_labels", len(c.ExternalLabels), MaxExternalLabels)

	for i, u := range c.Targets.Systemd.Units {
		p := fmt.Sprintf("targets.systemd.units[%d]", i)
		switch {
		case u == "":
			add(p, "must not be empty")
		case len(u) > maxUnitName:
			add(p, "longer than %d bytes", maxUnitName)
		case strings.Contains(u, "/"):
			add(p, "unit names contain no '/', got %q", u)
		default:
			if _, err := path.Match(u, ""); err != nil {
				add(p, "invalid glob %q: %s", u, err)
			}
		}
	}
	for i, ns := range c.Targets.Kubernetes.Namespaces {
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			add(fmt.Sprintf("targets.kubernetes.namespaces[%d]", i), "%q is not a valid namespace: %s", ns, strings.Join(msgs, "; "))
		}
	}
	if _, err := selector.Parse(c.Targets.Kubernetes.PodSelector); err != nil {
		var se *selector.SyntaxError
		if errors.As(err, &se) {
			add("targets.kubernetes.pod_selector", "at offset %d: %s", se.Offset, se.Reason)
		} else {
			add("targets.kubernetes.pod_selector", "%s", err)
		}
	}
	if _, err := regexp.Compile(c.Targets.Processes.Comm); err != nil {
		add("targets.processes.comm", "%s", err)
	}
	if _, err := regexp.Compile(c.Targets.Processes.Exe); err != nil {
		add("targets.processes.exe", "%s", err)
	}

	if _, err := relabel.Compile(c.RelabelConfigs); err != nil {
		for _, e := range unjoin(err) {
			var fe *relabel.FieldError
			if errors.As(e, &fe) {
				add(fe.Path, "%s", fe.Reason)
			} else {
				add("relabel_configs", "%s", e)
			}
		}
	}

	names := make([]string, 0, len(c.ExternalLabels))
	for k := range c.ExternalLabels {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		p := "external_labels." + k
		if !relabel.ValidLabelName(k) {
			p = fmt.Sprintf("external_labels[%q]", k)
			add(p, "%q is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)", k)
		} else if strings.HasPrefix(k, "__") {
			add(p, "label names starting with \"__\" are reserved")
		}
		switch v := c.ExternalLabels[k]; {
		case v == "":
			add(p, "value must not be empty")
		case !utf8.ValidString(v):
			add(p, "value is not valid UTF-8")
		}
	}

	switch c.Upload.Protocol {
	case ProtocolParca, ProtocolPyroscope:
	default:
		add("upload.protocol", "must be %q or %q, got %q", ProtocolParca, ProtocolPyroscope, c.Upload.Protocol)
	}
	if a := c.Upload.Address; a != "" {
		if reason := checkHostPort(a); reason != "" {
			add("upload.address", "%s", reason)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// checkHostPort returns why addr is not host:port, or "".
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("must be host:port, got %q", addr)
	}
	if host == "" {
		return fmt.Sprintf("missing host in %q", addr)
	}
	if strings.ContainsAny(host, " /\t\r\n") {
		return fmt.Sprintf("invalid host %q", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("port must be a number between 1 and 65535, got %q", port)
	}
	return ""
}

// unjoin returns the errors inside an errors.Join, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
