package relabel

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Action is what a relabel rule does.
type Action string

// The actions of Prometheus relabel_configs.
const (
	// Replace writes replacement (expanded with the regex groups) to
	// target_label when regex matches the joined source values.
	Replace Action = "replace"
	// Keep drops the target unless regex matches the joined source values.
	Keep Action = "keep"
	// Drop drops the target when regex matches the joined source values.
	Drop Action = "drop"
	// KeepEqual drops the target unless the joined source values equal the
	// value of target_label.
	KeepEqual Action = "keepequal"
	// DropEqual drops the target when the joined source values equal the
	// value of target_label.
	DropEqual Action = "dropequal"
	// HashMod sets target_label to md5(joined source values) mod modulus.
	HashMod Action = "hashmod"
	// LabelMap copies each label whose name matches regex to the name given
	// by replacement (expanded with the regex groups).
	LabelMap Action = "labelmap"
	// LabelDrop removes every label whose name matches regex.
	LabelDrop Action = "labeldrop"
	// LabelKeep removes every label whose name does not match regex.
	LabelKeep Action = "labelkeep"
	// Lowercase sets target_label to the joined source values in lower case.
	Lowercase Action = "lowercase"
	// Uppercase sets target_label to the joined source values in upper case.
	Uppercase Action = "uppercase"
)

// Actions lists every valid action.
var Actions = []Action{Replace, Keep, Drop, KeepEqual, DropEqual, HashMod, LabelMap, LabelDrop, LabelKeep, Lowercase, Uppercase}

// Defaults of the fields of Config, as in Prometheus.
const (
	DefaultSeparator   = ";"
	DefaultRegex       = "(.*)"
	DefaultReplacement = "$1"
	DefaultAction      = Replace
)

// Config is one relabel rule, with Prometheus's YAML field names. Decoding
// from YAML or JSON starts from DefaultConfig, so an absent field takes its
// default while an explicit empty string stays empty. A Config built in Go
// should start from DefaultConfig too.
type Config struct {
	// SourceLabels are the labels whose values are joined with Separator.
	SourceLabels []string `yaml:"source_labels,flow,omitempty" json:"source_labels,omitempty"`
	// Separator joins the source values; ";" by default.
	Separator string `yaml:"separator" json:"separator"`
	// Regex is matched against the joined values (or label names for
	// labelmap, labeldrop and labelkeep), fully anchored; "(.*)" by default.
	Regex string `yaml:"regex" json:"regex"`
	// Modulus for hashmod; required (non-zero) there, unset otherwise.
	Modulus uint64 `yaml:"modulus,omitempty" json:"modulus,omitempty"`
	// TargetLabel is the label written by replace, hashmod, lowercase and
	// uppercase, or compared by keepequal and dropequal. For replace it may
	// use regex groups ($1, ${name}).
	TargetLabel string `yaml:"target_label,omitempty" json:"target_label,omitempty"`
	// Replacement is the value written by replace, or the new label name of
	// labelmap, with regex groups expanded; "$1" by default.
	Replacement string `yaml:"replacement" json:"replacement"`
	// Action is what the rule does; replace by default.
	Action Action `yaml:"action" json:"action"`
}

// DefaultConfig returns a Config with Prometheus's defaults: separator ";",
// regex "(.*)", replacement "$1", action replace.
func DefaultConfig() Config {
	return Config{Separator: DefaultSeparator, Regex: DefaultRegex, Replacement: DefaultReplacement, Action: DefaultAction}
}

// FieldError is one problem with a relabel rule. Path names the field:
// "regex", "source_labels[1]", or with Compile
// "relabel_configs[2].regex".
type FieldError struct {
	Path   string
	Reason string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Reason }

// compileRegex anchors the pattern the way Prometheus does.
func compileRegex(s string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?s:" + s + ")$")
}

// Validate checks the rule with Prometheus's rules. It returns nil or the
// errors.Join of one *FieldError per problem.
func (c *Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate checks the rule and returns its compiled regexp when valid.
func (c *Config) validate() (*regexp.Regexp, error) {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
	}
	re, err := compileRegex(c.Regex)
	if err != nil {
		// Report the error against the pattern as written, not the
		// anchored form, when it fails on its own too.
		if _, rawErr := regexp.Compile(c.Regex); rawErr != nil {
			err = rawErr
		}
		add("regex", "%s", err.Error())
	}
	for i, l := range c.SourceLabels {
		if !ValidLabelName(l) {
			add(fmt.Sprintf("source_labels[%d]", i), "%q is not a valid label name", l)
		}
	}
	a := c.Action
	switch a {
	case Replace, Keep, Drop, KeepEqual, DropEqual, HashMod, LabelMap, LabelDrop, LabelKeep, Lowercase, Uppercase:
	case "":
		add("action", "must not be empty")
		return nil, joinErrs(errs)
	default:
		add("action", "unknown relabel action %q", string(a))
		return nil, joinErrs(errs)
	}
	if a == HashMod && c.Modulus == 0 {
		add("modulus", "must be non-zero for hashmod action")
	}
	switch a {
	case Replace:
		switch {
		case c.TargetLabel == "":
			add("target_label", "required for %s action", a)
		case strings.Contains(c.TargetLabel, "$"):
			if !targetWithVars.MatchString(c.TargetLabel) {
				add("target_label", "%q is invalid for %s action", c.TargetLabel, a)
			}
		case !ValidLabelName(c.TargetLabel):
			add("target_label", "%q is invalid for %s action", c.TargetLabel, a)
		}
	case HashMod, Lowercase, Uppercase, KeepEqual, DropEqual:
		if c.TargetLabel == "" {
			add("target_label", "required for %s action", a)
		} else if !ValidLabelName(c.TargetLabel) {
			add("target_label", "%q is invalid for %s action", c.TargetLabel, a)
		}
	case LabelMap:
		if !targetWithVars.MatchString(c.Replacement) {
			add("replacement", "%q is invalid for %s action", c.Replacement, a)
		}
	}
	switch a {
	case Lowercase, Uppercase:
		if c.Replacement != DefaultReplacement {
			add("replacement", "can not be set for %s action", a)
		}
	case KeepEqual, DropEqual:
		only := "%s action takes only source_labels and target_label"
		if c.Regex != DefaultRegex {
			add("regex", only, a)
		}
		if c.Separator != DefaultSeparator {
			add("separator", only, a)
		}
		if c.Replacement != DefaultReplacement {
			add("replacement", only, a)
		}
		if c.Modulus != 0 {
			add("modulus", only, a)
		}
	case LabelDrop, LabelKeep:
		only := "%s action takes only regex"
		if len(c.SourceLabels) > 0 {
			add("source_labels", only, a)
		}
		if c.TargetLabel != "" {
			add("target_label", only, a)
		}
		if c.Separator != DefaultSeparator {
			add("separator", only, a)
		}
		if c.Replacement != DefaultReplacement {
			add("replacement", only, a)
		}
		if c.Modulus != 0 {
			add("modulus", only, a)
		}
	}
	if len(errs) > 0 {
		return nil, joinErrs(errs)
	}
	return re, nil
}

// targetWithVars is Prometheus's legacy target syntax that also allows
// $var and ${var} references to regex groups.
var targetWithVars = regexp.MustCompile(`^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$`)

// ValidLabelName reports whether name has Prometheus's legacy label name
// syntax, [a-zA-Z_][a-zA-Z0-9_]*.
func ValidLabelName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if b == '_' || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (i > 0 && b >= '0' && b <= '9') {
			continue
		}
		return false
	}
	return true
}

// Rules is a compiled, validated list of relabel rules. It is immutable and
// safe for concurrent use; a nil *Rules has no rules.
type Rules struct {
	rules []rule
}

type rule struct {
	Config
	re *regexp.Regexp
}

// Compile validates and compiles cfgs in order. Errors are the errors.Join
// of *FieldError whose Path is "relabel_configs[<index>].<field>".
func Compile(cfgs []Config) (*Rules, error) {
	var errs []error
	rs := &Rules{rules: make([]rule, 0, len(cfgs))}
	for i := range cfgs {
		c := cfgs[i]
		re, err := c.validate()
		if err != nil {
			for _, e := range unjoin(err) {
				if fe, ok := e.(*FieldError); ok {
					errs = append(errs, &FieldError{Path: fmt.Sprintf("relabel_configs[%d].%s", i, fe.Path), Reason: fe.Reason})
				}
			}
			continue
		}
		c.SourceLabels = slices.Clone(c.SourceLabels)
		rs.rules = append(rs.rules, rule{Config: c, re: re})
	}
	if len(errs) > 0 {
		return nil, joinErrs(errs)
	}
	return rs, nil
}

// Len returns the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.rules)
}

// Process applies the rules in order to a copy of labels. If a rule drops
// the target it returns (nil, false). Otherwise it returns the resulting
// labels, without any label whose name starts with "__" (such as the
// __meta_* labels of discovery), and true. labels is not modified.
func (r *Rules) Process(labels map[string]string) (out map[string]string, keep bool) {
	lb := make(map[string]string, len(labels)+2)
	for k, v := range labels {
		if v != "" {
			lb[k] = v
		}
	}
	if r != nil {
		b := &builder{m: lb}
		for i := range r.rules {
			if !r.rules[i].apply(b) {
				return nil, false
			}
		}
	}
	for k := range lb {
		if strings.HasPrefix(k, "__") {
			delete(lb, k)
		}
	}
	return lb, true
}

// builder holds the labels while rules run. Like Prometheus's
// labels.Builder it remembers the order in which labels were set, because
// labelmap visits the untouched input labels (sorted by name) first and
// then the set ones in the order they were set, which decides who wins
// when two labels map to the same name.
type builder struct {
	m     map[string]string
	added []string
}

// set writes a label; an empty value removes it, as in Prometheus.
func (b *builder) set(name, value string) {
	if value == "" {
		b.del(name)
		return
	}
	if !slices.Contains(b.added, name) {
		b.added = append(b.added, name)
	}
	b.m[name] = value
}

func (b *builder) del(name string) {
	delete(b.m, name)
	if i := slices.Index(b.added, name); i >= 0 {
		b.added = slices.Delete(b.added, i, i+1)
	}
}

// snapshot returns the labels in Prometheus's Range order.
func (b *builder) snapshot() (names, values []string) {
	names = make([]string, 0, len(b.m))
	for k := range b.m {
		if !slices.Contains(b.added, k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	names = append(names, b.added...)
	values = make([]string, len(names))
	for i, n := range names {
		values[i] = b.m[n]
	}
	return names, values
}

func (r *rule) apply(b *builder) bool {
	lb := b.m
	var val string
	switch len(r.SourceLabels) {
	case 0:
	case 1:
		val = lb[r.SourceLabels[0]]
	default:
		values := make([]string, len(r.SourceLabels))
		for i, n := range r.SourceLabels {
			values[i] = lb[n]
		}
		val = strings.Join(values, r.Separator)
	}
	switch r.Action {
	case Drop:
		if r.re.MatchString(val) {
			return false
		}
	case Keep:
		if !r.re.MatchString(val) {
			return false
		}
	case DropEqual:
		if lb[r.TargetLabel] == val {
			return false
		}
	case KeepEqual:
		if lb[r.TargetLabel] != val {
			return false
		}
	case Replace:
		idx := r.re.FindStringSubmatchIndex(val)
		if idx == nil {
			break
		}
		target := string(r.re.ExpandString(nil, r.TargetLabel, val, idx))
		if !ValidLabelName(target) {
			break
		}
		b.set(target, string(r.re.ExpandString(nil, r.Replacement, val, idx)))
	case Lowercase:
		b.set(r.TargetLabel, strings.ToLower(val))
	case Uppercase:
		b.set(r.TargetLabel, strings.ToUpper(val))
	case HashMod:
		b.set(r.TargetLabel, strconv.FormatUint(HashModValue(val, r.Modulus), 10))
	case LabelMap:
		// Like Prometheus, iterate over a snapshot taken before the rule.
		names, values := b.snapshot()
		for i, name := range names {
			if !r.re.MatchString(name) {
				continue
			}
			value := values[i]
			if to := r.re.ReplaceAllString(name, r.Replacement); ValidLabelName(to) {
				b.set(to, value)
			}
		}
	case LabelDrop:
		for name := range lb {
			if r.re.MatchString(name) {
				b.del(name)
			}
		}
	case LabelKeep:
		for name := range lb {
			if !r.re.MatchString(name) {
				b.del(name)
			}
		}
	}
	return true
}

// HashModValue is the hashmod action's value: the last 8 bytes of the md5
// of value, big-endian, modulo modulus (as in Prometheus). modulus must not
// be zero; 0 is returned if it is.
func HashModValue(value string, modulus uint64) uint64 {
	if modulus == 0 {
		return 0
	}
	sum := md5.Sum([]byte(value))
	return binary.BigEndian.Uint64(sum[8:]) % modulus
}
