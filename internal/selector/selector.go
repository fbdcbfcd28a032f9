package selector

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// Errors returned by Parse.
var (
	// ErrSyntax: the selector is not valid Kubernetes label-selector syntax
	// (or names an invalid key or value). The wrapping *SyntaxError says
	// where.
	ErrSyntax = errors.New("invalid label selector")
)

// MaxLength is the longest selector string Parse accepts, in bytes.
const MaxLength = 4096

// SyntaxError describes why and where a selector failed to parse. It wraps
// ErrSyntax, so errors.Is(err, ErrSyntax) holds.
type SyntaxError struct {
	// Offset is the byte offset in the input of the requirement that failed.
	Offset int
	// Requirement is the text of the requirement that failed (trimmed).
	Requirement string
	// Reason says what is wrong.
	Reason string
}

func (e *SyntaxError) Error() string {
	if e.Requirement == "" {
		return fmt.Sprintf("%s at offset %d: %s", ErrSyntax, e.Offset, e.Reason)
	}
	return fmt.Sprintf("%s at offset %d (%q): %s", ErrSyntax, e.Offset, e.Requirement, e.Reason)
}

// Unwrap returns ErrSyntax.
func (e *SyntaxError) Unwrap() error { return ErrSyntax }

// Selector is a parsed label selector: a conjunction of requirements such as
// `platform=systemd`, `cluster in (a,b)`, `tier!=db`, `version`, `!canary`.
// The zero value selects everything. A Selector is immutable and safe for
// concurrent use.
type Selector struct {
	reqs []labels.Requirement // sorted by canonical string, deduplicated
	str  string               // canonical text
}

// Everything returns the selector that matches every label set.
func Everything() Selector { return Selector{} }

// Parse parses s in Kubernetes label-selector syntax. The empty (or
// all-blank) string selects everything. Errors wrap ErrSyntax and are a
// *SyntaxError naming the byte offset and the failing requirement.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLength {
		return Selector{}, &SyntaxError{Offset: MaxLength, Reason: fmt.Sprintf("selector is %d bytes, longer than %d", len(s), MaxLength)}
	}
	reqs, err := labels.ParseToRequirements(s)
	if err != nil {
		return Selector{}, locate(s, err)
	}
	return fromRequirements(reqs), nil
}

func fromRequirements(reqs []labels.Requirement) Selector {
	type keyed struct {
		key, str string
		req      labels.Requirement
	}
	ks := make([]keyed, 0, len(reqs))
	for _, r := range reqs {
		ks = append(ks, keyed{key: r.Key(), str: r.String(), req: r})
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		return strings.Compare(a.str, b.str)
	})
	ks = slices.CompactFunc(ks, func(a, b keyed) bool { return a.str == b.str })
	sel := Selector{}
	strs := make([]string, 0, len(ks))
	for _, k := range ks {
		sel.reqs = append(sel.reqs, k.req)
		strs = append(strs, k.str)
	}
	sel.str = strings.Join(strs, ",")
	return sel
}

// locate finds the first requirement of s that does not parse on its own
// and reports its offset; the grammar is a comma-separated list of
// requirements, with commas inside parentheses belonging to value sets.
func locate(s string, whole error) error {
	reason := strings.TrimPrefix(whole.Error(), "unable to parse requirement: ")
	start, depth := 0, 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			switch s[i] {
			case '(':
				depth++
				continue
			case ')':
				if depth > 0 {
					depth--
				}
				continue
			case ',':
				if depth > 0 {
					continue
				}
			default:
				continue
			}
		}
		piece := s[start:i]
		trimmed := strings.TrimSpace(piece)
		off := start + (len(piece) - len(strings.TrimLeft(piece, " \t\n\r")))
		if trimmed == "" {
			if i < len(s) || start > 0 {
				return &SyntaxError{Offset: off, Reason: "empty requirement"}
			}
		} else if _, err := labels.ParseToRequirements(trimmed); err != nil {
			return &SyntaxError{
				Offset:      off,
				Requirement: trimmed,
				Reason:      strings.TrimPrefix(err.Error(), "unable to parse requirement: "),
			}
		}
		start = i + 1
	}
	return &SyntaxError{Reason: reason}
}

// Matches reports whether the label set satisfies every requirement. A nil
// map is an empty label set.
func (s Selector) Matches(l map[string]string) bool {
	set := labels.Set(l)
	for i := range s.reqs {
		if !s.reqs[i].Matches(set) {
			return false
		}
	}
	return true
}

// String returns the canonical form: requirements sorted by key, then by
// text, duplicates removed. Parse(s.String()) yields an equal selector.
// The selector that matches everything is "".
func (s Selector) String() string { return s.str }

// Specificity is the number of distinct requirements; more specific
// selectors win when several assign a config to the same agent.
func (s Selector) Specificity() int { return len(s.reqs) }

// Empty reports whether the selector matches everything.
func (s Selector) Empty() bool { return len(s.reqs) == 0 }

// Keys returns the label keys the selector constrains, sorted, without
// duplicates.
func (s Selector) Keys() []string {
	keys := make([]string, 0, len(s.reqs))
	for i := range s.reqs {
		keys = append(keys, s.reqs[i].Key())
	}
	return slices.Compact(keys)
}

// MarshalText returns the canonical form, so a Selector encodes as a JSON
// or YAML string.
func (s Selector) MarshalText() ([]byte, error) { return []byte(s.str), nil }

// UnmarshalText parses text as Parse does.
func (s *Selector) UnmarshalText(text []byte) error {
	p, err := Parse(string(text))
	if err != nil {
		return err
	}
	*s = p
	return nil
}
