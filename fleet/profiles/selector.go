package profiles

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// MatchType is the operator of a label matcher.
type MatchType string

// The four operators of Prometheus label matchers.
const (
	MatchEqual     MatchType = "="
	MatchNotEqual  MatchType = "!="
	MatchRegexp    MatchType = "=~"
	MatchNotRegexp MatchType = "!~"
)

// Matcher matches one label; a missing label matches as "".
type Matcher struct {
	Name  string
	Type  MatchType
	Value string
	re    *regexp.Regexp
}

// NewMatcher builds a matcher; regular expressions are anchored.
func NewMatcher(t MatchType, name, value string) (*Matcher, error) {
	m := &Matcher{Name: name, Type: t, Value: value}
	switch t {
	case MatchEqual, MatchNotEqual:
	case MatchRegexp, MatchNotRegexp:
		re, err := regexp.Compile("^(?:" + value + ")$")
		if err != nil {
			return nil, fmt.Errorf("matcher %s%s%q: %w: %w", name, t, value, ErrInvalid, err)
		}
		m.re = re
	default:
		return nil, fmt.Errorf("matcher operator %q: %w", t, ErrInvalid)
	}
	return m, nil
}

// Matches reports whether v (the label's value, "" if absent) matches.
func (m *Matcher) Matches(v string) bool {
	switch m.Type {
	case MatchEqual:
		return v == m.Value
	case MatchNotEqual:
		return v != m.Value
	case MatchRegexp:
		return m.re.MatchString(v)
	case MatchNotRegexp:
		return !m.re.MatchString(v)
	}
	return false
}

// String writes the matcher back in selector syntax.
func (m *Matcher) String() string { return m.Name + string(m.Type) + strconv.Quote(m.Value) }

// matchAll reports whether the labels (plus the __type__ pseudo label)
// satisfy every matcher.
func matchAll(ms []*Matcher, labels map[string]string, typeID string) bool {
	for _, m := range ms {
		v := labels[m.Name]
		if m.Name == TypeLabel {
			v = typeID
		}
		if !m.Matches(v) {
			return false
		}
	}
	return true
}

// ParseSelector parses `name{l="v", l2!="v", l3=~"re", l4!~"re"}`. The
// name (optional) matches __name__; a full type id
// (name:sample_type:sample_unit:period_type:period_unit) matches __type__.
// "" and "{}" select everything.
func ParseSelector(s string) ([]*Matcher, error) {
	s = strings.TrimSpace(s)
	var ms []*Matcher
	name, rest := s, ""
	if i := strings.IndexByte(s, '{'); i >= 0 {
		name, rest = strings.TrimSpace(s[:i]), s[i:]
	}
	if name != "" {
		if strings.ContainsAny(name, " \t\"}=!~,") {
			return nil, fmt.Errorf("selector %q: bad profile name %q: %w", s, name, ErrInvalid)
		}
		if strings.Contains(name, ":") {
			if _, err := ParseProfileType(name); err != nil {
				return nil, err
			}
			ms = append(ms, &Matcher{Name: TypeLabel, Type: MatchEqual, Value: name})
		} else {
			ms = append(ms, &Matcher{Name: NameLabel, Type: MatchEqual, Value: name})
		}
	}
	if rest == "" {
		return ms, nil
	}
	if !strings.HasSuffix(rest, "}") {
		return nil, fmt.Errorf("selector %q: missing closing brace: %w", s, ErrInvalid)
	}
	body := rest[1 : len(rest)-1]
	for {
		body = strings.TrimLeft(body, " \t\n")
		if body == "" {
			break
		}
		i := 0
		for i < len(body) && isLabelChar(body[i], i == 0) {
			i++
		}
		if i == 0 {
			return nil, fmt.Errorf("selector %q: expected a label name at %q: %w", s, body, ErrInvalid)
		}
		lname := body[:i]
		body = strings.TrimLeft(body[i:], " \t")
		var op MatchType
		switch {
		case strings.HasPrefix(body, "=~"):
			op = MatchRegexp
		case strings.HasPrefix(body, "!~"):
			op = MatchNotRegexp
		case strings.HasPrefix(body, "!="):
			op = MatchNotEqual
		case strings.HasPrefix(body, "="):
			op = MatchEqual
		default:
			return nil, fmt.Errorf("selector %q: expected =, !=, =~ or !~ after %s: %w", s, lname, ErrInvalid)
		}
		body = strings.TrimLeft(body[len(op):], " \t")
		q, err := strconv.QuotedPrefix(body)
		if err != nil || q[0] == '\'' && len(q) < 2 {
			return nil, fmt.Errorf("selector %q: expected a quoted value for %s: %w", s, lname, ErrInvalid)
		}
		val, err := strconv.Unquote(q)
		if err != nil {
			return nil, fmt.Errorf("selector %q: value of %s: %w", s, lname, ErrInvalid)
		}
		m, err := NewMatcher(op, lname, val)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
		body = strings.TrimLeft(body[len(q):], " \t\n")
		if body == "" {
			break
		}
		if body[0] != ',' {
			return nil, fmt.Errorf("selector %q: expected , or } at %q: %w", s, body, ErrInvalid)
		}
		body = body[1:]
	}
	return ms, nil
}

func isLabelChar(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
}
