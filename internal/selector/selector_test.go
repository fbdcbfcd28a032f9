package selector

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMatches(t *testing.T) {
	systemd := map[string]string{"platform": "systemd", "cluster": "a", "tier": "web", "version": "1.2.0"}
	k8s := map[string]string{"platform": "kubernetes", "cluster": "c", "tier": "db", "canary": "true"}
	tests := []struct {
		sel         string
		canonical   string
		specificity int
		systemd     bool
		k8s         bool
		empty       bool
	}{
		{sel: "", canonical: "", specificity: 0, systemd: true, k8s: true, empty: true},
		{sel: "   ", canonical: "", specificity: 0, systemd: true, k8s: true, empty: true},
		{sel: "platform=systemd", canonical: "platform=systemd", specificity: 1, systemd: true},
		{sel: "platform==kubernetes", canonical: "platform==kubernetes", specificity: 1, k8s: true},
		{sel: "cluster in (a,b)", canonical: "cluster in (a,b)", specificity: 1, systemd: true},
		{sel: "cluster in (b, a)", canonical: "cluster in (a,b)", specificity: 1, systemd: true},
		{sel: "cluster notin (a,b)", canonical: "cluster notin (a,b)", specificity: 1, k8s: true},
		{sel: "tier!=db", canonical: "tier!=db", specificity: 1, systemd: true},
		{sel: "version", canonical: "version", specificity: 1, systemd: true},
		{sel: "!canary", canonical: "!canary", specificity: 1, systemd: true},
		{sel: "canary", canonical: "canary", specificity: 1, k8s: true},
		{sel: "tier!=db,platform=systemd", canonical: "platform=systemd,tier!=db", specificity: 2, systemd: true},
		{sel: " platform = systemd , tier != db ", canonical: "platform=systemd,tier!=db", specificity: 2, systemd: true},
		{sel: "platform=systemd,platform=systemd", canonical: "platform=systemd", specificity: 1, systemd: true},
		{sel: "platform in (systemd,kubernetes),!canary", canonical: "!canary,platform in (kubernetes,systemd)", specificity: 2, systemd: true},
		{sel: "platform in (systemd,kubernetes)", canonical: "platform in (kubernetes,systemd)", specificity: 1, systemd: true, k8s: true},
		{sel: "absent!=x", canonical: "absent!=x", specificity: 1, systemd: true, k8s: true},
		{sel: "cluster=a,cluster!=b", canonical: "cluster!=b,cluster=a", specificity: 2, systemd: true},
		{sel: "fleetprof.io/role=edge", canonical: "fleetprof.io/role=edge", specificity: 1},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			s, err := Parse(tt.sel)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.sel, err)
			}
			if got := s.String(); got != tt.canonical {
				t.Errorf("String() = %q, want %q", got, tt.canonical)
			}
			if got := s.Specificity(); got != tt.specificity {
				t.Errorf("Specificity() = %d, want %d", got, tt.specificity)
			}
			if got := s.Empty(); got != tt.empty {
				t.Errorf("Empty() = %v, want %v", got, tt.empty)
			}
			if got := s.Matches(systemd); got != tt.systemd {
				t.Errorf("Matches(systemd) = %v, want %v", got, tt.systemd)
			}
			if got := s.Matches(k8s); got != tt.k8s {
				t.Errorf("Matches(k8s) = %v, want %v", got, tt.k8s)
			}
			again, err := Parse(s.String())
			if err != nil {
				t.Fatalf("Parse(String()=%q): %v", s.String(), err)
			}
			if again.String() != s.String() {
				t.Errorf("canonical form not stable: %q -> %q", s.String(), again.String())
			}
		})
	}
}

func TestOrderInsensitive(t *testing.T) {
	a, err := Parse("cluster=a,cluster!=b,tier in (x,y)")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("tier in (y,x), cluster!=b ,cluster=a")
	if err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Errorf("same selector, different canonical forms: %q vs %q", a.String(), b.String())
	}
}

func TestZeroValueMatchesEverything(t *testing.T) {
	var s Selector
	if !s.Matches(nil) || !s.Matches(map[string]string{"a": "b"}) {
		t.Error("zero Selector must match everything")
	}
	if s.String() != "" || s.Specificity() != 0 || !s.Empty() {
		t.Errorf("zero Selector: String %q, Specificity %d, Empty %v", s.String(), s.Specificity(), s.Empty())
	}
	if Everything().String() != "" {
		t.Error("Everything() is not the empty selector")
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		sel      string
		offset   int
		req      string
		contains string
	}{
		{sel: "platform=", offset: 0, req: "", contains: ""}, // valid: empty value; checked below as not an error
		{sel: "a=b,,c=d", offset: 4, contains: "empty requirement"},
		{sel: "a=b, c d", offset: 5, req: "c d", contains: "expected"},
		{sel: "cluster in (a,b", offset: 0, req: "cluster in (a,b", contains: "')'"},
		{sel: "tier=db,Bad Key=x", offset: 8, req: "Bad Key=x"},
		{sel: "platform=systemd,x=" + strings.Repeat("v", 64), offset: 17, contains: "63"},
		{sel: "a>b", offset: 0, req: "a>b", contains: "integer"},
		{sel: "a=b,", offset: 4, contains: "empty requirement"},
		{sel: ",a=b", offset: 0, contains: "empty requirement"},
		{sel: "a in ()x", offset: 0},
		{sel: "!a=b", offset: 0, req: "!a=b"},
		{sel: "a=(b)", offset: 0},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			_, err := Parse(tt.sel)
			if tt.sel == "platform=" {
				if err != nil {
					t.Fatalf("Parse(%q): %v", tt.sel, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse(%q): no error", tt.sel)
			}
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("error %v does not wrap ErrSyntax", err)
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not a *SyntaxError", err)
			}
			if se.Offset != tt.offset {
				t.Errorf("Offset = %d, want %d (%v)", se.Offset, tt.offset, err)
			}
			if tt.req != "" && se.Requirement != tt.req {
				t.Errorf("Requirement = %q, want %q", se.Requirement, tt.req)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not contain %q", err, tt.contains)
			}
			if se.Reason == "" {
				t.Errorf("empty Reason in %v", err)
			}
		})
	}
}

func TestTooLong(t *testing.T) {
	_, err := Parse(strings.Repeat("a", MaxLength+1))
	if !errors.Is(err, ErrSyntax) {
		t.Fatalf("got %v, want ErrSyntax", err)
	}
}

func TestKeys(t *testing.T) {
	s, err := Parse("tier!=db,cluster=a,cluster!=b,!canary")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"canary", "cluster", "tier"}, s.Keys()); diff != "" {
		t.Errorf("Keys() mismatch (-want +got):\n%s", diff)
	}
}

func TestTextRoundTrip(t *testing.T) {
	type doc struct {
		Selector Selector `json:"selector"`
	}
	var d doc
	if err := json.Unmarshal([]byte(`{"selector":"tier!=db, platform=systemd"}`), &d); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), `{"selector":"platform=systemd,tier!=db"}`; got != want {
		t.Errorf("Marshal = %s, want %s", got, want)
	}
	if err := json.Unmarshal([]byte(`{"selector":"a b"}`), &d); !errors.Is(err, ErrSyntax) {
		t.Errorf("Unmarshal of a bad selector: %v, want ErrSyntax", err)
	}
}
