package profiles

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// NameLabel is the label that holds a profile's name (e.g. process_cpu).
const NameLabel = "__name__"

// TypeLabel is the pseudo label that selectors may use to match a profile
// type ID (name:sample_type:sample_unit:period_type:period_unit).
const TypeLabel = "__type__"

// ProfileType identifies what a profile measures, in Parca's terms.
type ProfileType struct {
	Name       string `json:"name"`
	SampleType string `json:"sample_type"`
	SampleUnit string `json:"sample_unit"`
	PeriodType string `json:"period_type"`
	PeriodUnit string `json:"period_unit"`
}

// ID is the Parca-style type id "name:sample_type:sample_unit:period_type:period_unit".
func (t ProfileType) ID() string {
	return strings.Join([]string{t.Name, t.SampleType, t.SampleUnit, t.PeriodType, t.PeriodUnit}, ":")
}

// ParseProfileType parses an ID as written by ProfileType.ID.
func ParseProfileType(id string) (ProfileType, error) {
	f := strings.Split(id, ":")
	if len(f) != 5 {
		return ProfileType{}, fmt.Errorf("profile type %q: want name:sample_type:sample_unit:period_type:period_unit: %w", id, ErrInvalid)
	}
	return ProfileType{Name: f[0], SampleType: f[1], SampleUnit: f[2], PeriodType: f[3], PeriodUnit: f[4]}, nil
}

// Profile is one stored profile: the series it belongs to and its data.
type Profile struct {
	// Labels of the series, including NameLabel. The project is not a label.
	Labels map[string]string
	// Type of the profile; see Describe.
	Type ProfileType
	// Time the profile window started.
	Time time.Time
	// Duration of the profile window.
	Duration time.Duration
	// Total of the type's sample values.
	Total int64
	// Data is the gzipped pprof profile.
	Data []byte
}

// Describe derives the type (with the given name) and the total value of a
// parsed profile. The type's sample type is the profile's default sample
// type, or its last one.
func Describe(p *profile.Profile, name string) (ProfileType, int64) {
	idx := sampleIndex(p, "")
	t := ProfileType{Name: name}
	if idx >= 0 {
		t.SampleType, t.SampleUnit = p.SampleType[idx].Type, p.SampleType[idx].Unit
	}
	if p.PeriodType != nil {
		t.PeriodType, t.PeriodUnit = p.PeriodType.Type, p.PeriodType.Unit
	}
	var total int64
	if idx >= 0 {
		for _, s := range p.Sample {
			if idx < len(s.Value) {
				total += s.Value[idx]
			}
		}
	}
	return t, total
}

// sampleIndex returns the index of the sample type named typ, or the
// default (or last) one when typ is "", or -1.
func sampleIndex(p *profile.Profile, typ string) int {
	if typ == "" {
		typ = p.DefaultSampleType
	}
	for i, st := range p.SampleType {
		if st.Type == typ {
			return i
		}
	}
	return len(p.SampleType) - 1
}

// Query selects profiles of one project.
type Query struct {
	// Matchers that the series labels must all satisfy.
	Matchers []*Matcher
	// From and To bound the profile start times: From <= t < To.
	From, To time.Time
}

// NewQuery parses a selector such as `process_cpu{unit="nginx.service"}`
// and checks the range.
func NewQuery(selector string, from, to time.Time) (Query, error) {
	ms, err := ParseSelector(selector)
	if err != nil {
		return Query{}, err
	}
	if !to.After(from) {
		return Query{}, fmt.Errorf("time range %s..%s is empty: %w", from.Format(time.RFC3339), to.Format(time.RFC3339), ErrInvalid)
	}
	return Query{Matchers: ms, From: from, To: to}, nil
}

// Series is one label set of a type and its totals per profile window.
type Series struct {
	Labels map[string]string `json:"labels"`
	Type   ProfileType       `json:"type"`
	Points []Point           `json:"points"`
}

// Point is the total of one profile window.
type Point struct {
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"duration_ns"`
	Total    int64         `json:"total"`
}

// TopEntry is one function of a top table.
type TopEntry struct {
	Name        string  `json:"name"`
	Flat        int64   `json:"flat"`
	FlatPercent float64 `json:"flat_percent"`
	Cum         int64   `json:"cum"`
	CumPercent  float64 `json:"cum_percent"`
}

// Top is a table of functions by self (flat) value.
type Top struct {
	Type    ProfileType `json:"type"`
	Total   int64       `json:"total"`
	Entries []TopEntry  `json:"entries"`
}

// FlameNode is one frame of a flame graph; Value includes the children,
// Self does not.
type FlameNode struct {
	Name     string       `json:"name"`
	Value    int64        `json:"value"`
	Self     int64        `json:"self"`
	Children []*FlameNode `json:"children,omitempty"`
}

// Store holds profiles and answers queries, always within one project.
// All methods are goroutine-safe. Implementations: DiskStore (SQLite index
// + blobs on local disk); a PostgreSQL index with S3 blobs can follow.
type Store interface {
	// Write stores the profiles of one project all or nothing.
	Write(ctx context.Context, projectID string, ps []Profile) error
	// ProfileTypes lists the types with profiles in [from, to).
	ProfileTypes(ctx context.Context, projectID string, from, to time.Time) ([]ProfileType, error)
	// LabelNames lists the label names of series with profiles in [from, to).
	LabelNames(ctx context.Context, projectID string, from, to time.Time) ([]string, error)
	// LabelValues lists the values of one label in [from, to).
	LabelValues(ctx context.Context, projectID, name string, from, to time.Time) ([]string, error)
	// Series returns the matching series with their totals per window.
	Series(ctx context.Context, projectID string, q Query) ([]Series, error)
	// Merge merges the matching profiles into one; ErrNotFound when none
	// match, ErrInvalid when they are of several types.
	Merge(ctx context.Context, projectID string, q Query) (*profile.Profile, error)
	// Top merges and returns the top functions (limit <= 0: all).
	Top(ctx context.Context, projectID string, q Query, limit int) (*Top, error)
	// FlameGraph merges and returns the call tree.
	FlameGraph(ctx context.Context, projectID string, q Query) (*FlameNode, error)
}

// frameName names a location line for top tables and flame graphs.
func frameName(loc *profile.Location, line int) string {
	if line < len(loc.Line) && loc.Line[line].Function != nil && loc.Line[line].Function.Name != "" {
		return loc.Line[line].Function.Name
	}
	return fmt.Sprintf("0x%x", loc.Address)
}

// frames returns a sample's frame names from root to leaf.
func frames(s *profile.Sample) []string {
	var out []string
	for i := len(s.Location) - 1; i >= 0; i-- {
		loc := s.Location[i]
		if len(loc.Line) == 0 {
			out = append(out, frameName(loc, 0))
			continue
		}
		for j := len(loc.Line) - 1; j >= 0; j-- {
			out = append(out, frameName(loc, j))
		}
	}
	return out
}

// TopOf computes the top table of a merged profile (single sample type).
func TopOf(p *profile.Profile, t ProfileType, limit int) *Top {
	idx := sampleIndex(p, t.SampleType)
	flat := map[string]int64{}
	cum := map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		if idx < 0 || idx >= len(s.Value) {
			continue
		}
		v := s.Value[idx]
		total += v
		fs := frames(s)
		if len(fs) == 0 {
			continue
		}
		flat[fs[len(fs)-1]] += v
		seen := make(map[string]bool, len(fs))
		for _, f := range fs {
			if !seen[f] {
				seen[f] = true
				cum[f] += v
			}
		}
	}
	top := &Top{Type: t, Total: total, Entries: []TopEntry{}}
	for name, c := range cum {
		e := TopEntry{Name: name, Flat: flat[name], Cum: c}
		if total != 0 {
			e.FlatPercent = 100 * float64(e.Flat) / float64(total)
			e.CumPercent = 100 * float64(e.Cum) / float64(total)
		}
		top.Entries = append(top.Entries, e)
	}
	sort.Slice(top.Entries, func(i, j int) bool {
		a, b := top.Entries[i], top.Entries[j]
		if a.Flat != b.Flat {
			return a.Flat > b.Flat
		}
		if a.Cum != b.Cum {
			return a.Cum > b.Cum
		}
		return a.Name < b.Name
	})
	if limit > 0 && len(top.Entries) > limit {
		top.Entries = top.Entries[:limit]
	}
	return top
}

// FlameGraphOf builds the call tree of a merged profile, root named "total".
func FlameGraphOf(p *profile.Profile, t ProfileType) *FlameNode {
	idx := sampleIndex(p, t.SampleType)
	root := &FlameNode{Name: "total"}
	index := map[*FlameNode]map[string]*FlameNode{}
	for _, s := range p.Sample {
		if idx < 0 || idx >= len(s.Value) {
			continue
		}
		v := s.Value[idx]
		n := root
		n.Value += v
		for _, f := range frames(s) {
			kids := index[n]
			if kids == nil {
				kids = map[string]*FlameNode{}
				index[n] = kids
			}
			c := kids[f]
			if c == nil {
				c = &FlameNode{Name: f}
				kids[f] = c
				n.Children = append(n.Children, c)
			}
			c.Value += v
			n = c
		}
		n.Self += v
	}
	sortFlame(root)
	return root
}

func sortFlame(n *FlameNode) {
	sort.Slice(n.Children, func(i, j int) bool { return n.Children[i].Name < n.Children[j].Name })
	for _, c := range n.Children {
		sortFlame(c)
	}
}

// onlySampleType reduces p to the one sample type of t so that profiles
// with different extra columns still merge.
func onlySampleType(p *profile.Profile, t ProfileType) error {
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == t.SampleType && st.Unit == t.SampleUnit {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("profile has no sample type %s/%s: %w", t.SampleType, t.SampleUnit, ErrInvalid)
	}
	p.SampleType = []*profile.ValueType{p.SampleType[idx]}
	p.DefaultSampleType = ""
	for _, s := range p.Sample {
		if idx < len(s.Value) {
			s.Value = []int64{s.Value[idx]}
		} else {
			s.Value = []int64{0}
		}
	}
	return nil
}
