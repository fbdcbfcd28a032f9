package profiles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

type seriesRow struct {
	id     int64
	typ    ProfileType
	typeID string
	labels map[string]string
}

// seriesOf lists the project's series whose labels match ms and that have
// profiles in [from, to).
func (s *DiskStore) seriesOf(ctx context.Context, projectID string, ms []*Matcher, from, to time.Time) ([]seriesRow, error) {
	rs, err := s.r.QueryContext(ctx, s.q(`SELECT s.id, s.type, s.labels FROM series s WHERE s.project = ?
		AND EXISTS (SELECT 1 FROM profiles p WHERE p.series_id = s.id AND p.time_ns >= ? AND p.time_ns < ?)`),
		projectID, from.UnixNano(), to.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("query series: %w", err)
	}
	defer rs.Close()
	var out []seriesRow
	for rs.Next() {
		var r seriesRow
		var lj string
		if err := rs.Scan(&r.id, &r.typeID, &lj); err != nil {
			return nil, fmt.Errorf("scan series: %w", err)
		}
		if err := json.Unmarshal([]byte(lj), &r.labels); err != nil {
			return nil, fmt.Errorf("decode series labels: %w", err)
		}
		if r.typ, err = ParseProfileType(r.typeID); err != nil {
			return nil, err
		}
		if matchAll(ms, r.labels, r.typeID) {
			out = append(out, r)
		}
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("read series: %w", err)
	}
	return out, nil
}

func checkRange(from, to time.Time) error {
	if !to.After(from) {
		return fmt.Errorf("time range is empty: %w", ErrInvalid)
	}
	return nil
}

// ProfileTypes implements Store.
func (s *DiskStore) ProfileTypes(ctx context.Context, projectID string, from, to time.Time) ([]ProfileType, error) {
	if err := checkRange(from, to); err != nil {
		return nil, err
	}
	ss, err := s.seriesOf(ctx, projectID, nil, from, to)
	if err != nil {
		return nil, err
	}
	seen := map[string]ProfileType{}
	for _, r := range ss {
		seen[r.typeID] = r.typ
	}
	out := make([]ProfileType, 0, len(seen))
	for _, t := range seen {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out, nil
}

// LabelNames implements Store.
func (s *DiskStore) LabelNames(ctx context.Context, projectID string, from, to time.Time) ([]string, error) {
	if err := checkRange(from, to); err != nil {
		return nil, err
	}
	ss, err := s.seriesOf(ctx, projectID, nil, from, to)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, r := range ss {
		for k := range r.labels {
			seen[k] = true
		}
	}
	return sortedKeys(seen), nil
}

// LabelValues implements Store.
func (s *DiskStore) LabelValues(ctx context.Context, projectID, name string, from, to time.Time) ([]string, error) {
	if err := checkRange(from, to); err != nil {
		return nil, err
	}
	ss, err := s.seriesOf(ctx, projectID, nil, from, to)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, r := range ss {
		if v, ok := r.labels[name]; ok {
			seen[v] = true
		}
	}
	return sortedKeys(seen), nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (s *DiskStore) rowsOf(ctx context.Context, ss []seriesRow, from, to time.Time) ([]row, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	var out []row
	for start := 0; start < len(ss); start += 500 {
		chunk := ss[start:min(start+500, len(ss))]
		ids := make([]string, len(chunk))
		for i, r := range chunk {
			ids[i] = strconv.FormatInt(r.id, 10)
		}
		rows, err := s.selectRows(ctx, s.r, `SELECT `+rowCols+` FROM profiles WHERE series_id IN (`+strings.Join(ids, ",")+`)
			AND time_ns >= ? AND time_ns < ? ORDER BY series_id, time_ns`, from.UnixNano(), to.UnixNano())
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
	}
	return out, nil
}

// Series implements Store.
func (s *DiskStore) Series(ctx context.Context, projectID string, q Query) ([]Series, error) {
	if err := checkRange(q.From, q.To); err != nil {
		return nil, err
	}
	ss, err := s.seriesOf(ctx, projectID, q.Matchers, q.From, q.To)
	if err != nil {
		return nil, err
	}
	rows, err := s.rowsOf(ctx, ss, q.From, q.To)
	if err != nil {
		return nil, err
	}
	byID := map[int64]*Series{}
	out := make([]Series, len(ss))
	for i, r := range ss {
		out[i] = Series{Labels: r.labels, Type: r.typ, Points: []Point{}}
		byID[r.id] = &out[i]
	}
	for _, r := range rows {
		se := byID[r.seriesID]
		se.Points = append(se.Points, Point{Time: time.Unix(0, r.timeNS).UTC(), Duration: time.Duration(r.durationNS), Total: r.total})
	}
	sort.Slice(out, func(i, j int) bool {
		return labelsKey(out[i].Labels)+out[i].Type.ID() < labelsKey(out[j].Labels)+out[j].Type.ID()
	})
	return out, nil
}

// mergeBatch is how many parsed profiles are merged at once, which bounds
// the memory of a merge over many windows.
const mergeBatch = 64

// Merge implements Store.
func (s *DiskStore) Merge(ctx context.Context, projectID string, q Query) (*profile.Profile, error) {
	p, _, err := s.merge(ctx, projectID, q)
	return p, err
}

func (s *DiskStore) merge(ctx context.Context, projectID string, q Query) (*profile.Profile, ProfileType, error) {
	if err := checkRange(q.From, q.To); err != nil {
		return nil, ProfileType{}, err
	}
	ss, err := s.seriesOf(ctx, projectID, q.Matchers, q.From, q.To)
	if err != nil {
		return nil, ProfileType{}, err
	}
	if len(ss) == 0 {
		return nil, ProfileType{}, fmt.Errorf("no profiles match the query: %w", ErrNotFound)
	}
	types := map[string]bool{}
	for _, r := range ss {
		types[r.typeID] = true
	}
	if len(types) > 1 {
		return nil, ProfileType{}, fmt.Errorf("the query matches %d profile types (%s); select one with a name or type id: %w",
			len(types), strings.Join(sortedKeys(types), ", "), ErrInvalid)
	}
	t := ss[0].typ
	rows, err := s.rowsOf(ctx, ss, q.From, q.To)
	if err != nil {
		return nil, t, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan row)
	parsed := make(chan *profile.Profile, mergeBatch)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range jobs {
				p, err := s.readBlob(ctx, r.blob)
				if err == nil {
					err = onlySampleType(p, t)
				}
				if errors.Is(err, fs.ErrNotExist) {
					continue // removed by retention or compaction meanwhile
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("blob %s: %w", r.blob, err)
					}
					mu.Unlock()
					cancel()
					continue
				}
				select {
				case parsed <- p:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, r := range rows {
			select {
			case jobs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(parsed) }()
	var acc *profile.Profile
	batch := make([]*profile.Profile, 0, mergeBatch+1)
	flush := func() error {
		if acc != nil {
			batch = append(batch, acc)
		}
		if len(batch) == 0 {
			return nil
		}
		m, err := profile.Merge(batch)
		if err != nil {
			return fmt.Errorf("merge profiles: %w", err)
		}
		acc, batch = m, batch[:0]
		return nil
	}
	var mergeErr error
	for p := range parsed {
		if mergeErr != nil {
			continue
		}
		batch = append(batch, p)
		if len(batch) >= mergeBatch {
			if mergeErr = flush(); mergeErr != nil {
				cancel()
			}
		}
	}
	if mergeErr == nil {
		mergeErr = flush()
	}
	if firstErr != nil {
		return nil, t, firstErr
	}
	if mergeErr != nil {
		return nil, t, mergeErr
	}
	if ctx.Err() != nil && acc == nil {
		return nil, t, ctx.Err()
	}
	if acc == nil {
		return nil, t, fmt.Errorf("no profiles match the query: %w", ErrNotFound)
	}
	return acc, t, nil
}

// Top implements Store.
func (s *DiskStore) Top(ctx context.Context, projectID string, q Query, limit int) (*Top, error) {
	p, t, err := s.merge(ctx, projectID, q)
	if err != nil {
		return nil, err
	}
	return TopOf(p, t, limit), nil
}

// FlameGraph implements Store.
func (s *DiskStore) FlameGraph(ctx context.Context, projectID string, q Query) (*FlameNode, error) {
	p, t, err := s.merge(ctx, projectID, q)
	if err != nil {
		return nil, err
	}
	return FlameGraphOf(p, t), nil
}
