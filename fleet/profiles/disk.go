package profiles

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Options tune a DiskStore. The zero value (or nil) means defaults.
type Options struct {
	// Logger; nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer for the store's metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Retention is the maximum age of a profile; 0 means 15 days.
	Retention time.Duration
	// MaxBytes caps the total size of the blobs (oldest go first); 0 means no cap.
	MaxBytes int64
	// CompactAfter: windows older than this are merged per series; 0 means
	// 1 hour, negative disables compaction.
	CompactAfter time.Duration
	// CompactInterval is the length of a compacted window; 0 means 5 minutes.
	CompactInterval time.Duration
	// MaintenanceEvery is the period of Run's retention, compaction and
	// cleanup pass; 0 means 1 minute.
	MaintenanceEvery time.Duration
	// OrphanGrace: the periodic cleanup leaves unindexed blobs and temp
	// files younger than this alone (a write may be in flight); 0 means 1 minute.
	OrphanGrace time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *Options) withDefaults() Options {
	var d Options
	if o != nil {
		d = *o
	}
	if d.Logger == nil {
		d.Logger = zap.NewNop()
	}
	if d.Retention == 0 {
		d.Retention = 15 * 24 * time.Hour
	}
	if d.CompactAfter == 0 {
		d.CompactAfter = time.Hour
	}
	if d.CompactInterval == 0 {
		d.CompactInterval = 5 * time.Minute
	}
	if d.MaintenanceEvery == 0 {
		d.MaintenanceEvery = time.Minute
	}
	if d.OrphanGrace == 0 {
		d.OrphanGrace = time.Minute
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return d
}

// DiskStore is the embedded Store: each profile is an immutable gzipped
// pprof file under dir/blobs, indexed in the SQLite database dir/index.db.
// A blob is durable (written to a temp file, fsynced, renamed, directory
// fsynced) before its index row is committed, so a crash leaves at worst an
// orphan blob, which the cleanup removes.
type DiskStore struct {
	dir  string
	opts Options
	log  *zap.Logger
	w    *sql.DB // one connection: writes are serialized
	r    *sql.DB

	mu     sync.Mutex
	series map[string]int64 // project \x00 type \x00 labels → id

	pmu     sync.Mutex // guards pending
	pending []*commitReq
	leader  sync.Mutex // held by the writer that commits a group

	m storeMetrics
}

type storeMetrics struct {
	written, bytes, compacted, expired, orphans, dangling prometheus.Counter
}

var _ Store = (*DiskStore)(nil)

const schema = `
CREATE TABLE IF NOT EXISTS series (
  id      INTEGER PRIMARY KEY,
  project TEXT NOT NULL,
  type    TEXT NOT NULL,
  labels  TEXT NOT NULL,
  UNIQUE (project, type, labels)
);
CREATE TABLE IF NOT EXISTS profiles (
  id          INTEGER PRIMARY KEY,
  series_id   INTEGER NOT NULL REFERENCES series(id),
  time_ns     INTEGER NOT NULL,
  duration_ns INTEGER NOT NULL,
  total       INTEGER NOT NULL,
  size        INTEGER NOT NULL,
  blob        TEXT NOT NULL UNIQUE,
  level       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS profiles_series_time ON profiles (series_id, time_ns);
CREATE INDEX IF NOT EXISTS profiles_time ON profiles (time_ns);
CREATE INDEX IF NOT EXISTS profiles_level_time ON profiles (level, time_ns);
`

// Open opens (creating if needed) the store in dir, the store's own
// directory (the fleet passes <data-dir>/profiles), and runs a cleanup of
// orphan blobs and dangling index rows before returning.
func Open(ctx context.Context, dir string, opts *Options) (*DiskStore, error) {
	o := opts.withDefaults()
	for _, d := range []string{dir, filepath.Join(dir, "blobs"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create profile store dir: %w", err)
		}
	}
	dsn := "file:" + filepath.Join(dir, "index.db") +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open profile index: %w", err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.ExecContext(ctx, schema); err != nil {
		w.Close()
		return nil, fmt.Errorf("create profile index schema: %w", err)
	}
	r, err := sql.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open profile index: %w", err)
	}
	r.SetMaxOpenConns(4)
	s := &DiskStore{dir: dir, opts: o, log: o.Logger, w: w, r: r, series: map[string]int64{}}
	s.m = storeMetrics{
		written:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_written_total", Help: "Profiles written to the profile store."}),
		bytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_written_bytes_total", Help: "Bytes of gzipped pprof written to the profile store."}),
		compacted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_compacted_total", Help: "Profiles merged away by compaction."}),
		expired:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_expired_total", Help: "Profiles deleted by retention (age or size)."}),
		orphans:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_orphan_blobs_removed_total", Help: "Unindexed blobs or temp files removed by cleanup."}),
		dangling:  prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetprof_profiles_dangling_rows_removed_total", Help: "Index rows without a blob removed by cleanup."}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.written, s.m.bytes, s.m.compacted, s.m.expired, s.m.orphans, s.m.dangling} {
			if err := o.Registerer.Register(c); err != nil {
				s.Close()
				return nil, fmt.Errorf("register profile store metrics: %w", err)
			}
		}
	}
	if err := s.Cleanup(ctx, true); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the index.
func (s *DiskStore) Close() error {
	return errors.Join(s.w.Close(), s.r.Close())
}

// Run does retention, compaction and cleanup every MaintenanceEvery until
// ctx ends; it returns nil on cancel.
func (s *DiskStore) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.MaintenanceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.Maintain(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("profile store maintenance", zap.Error(err))
		}
	}
}

// Maintain runs one pass of retention, compaction and cleanup.
func (s *DiskStore) Maintain(ctx context.Context) error {
	return errors.Join(s.Retain(ctx), s.Compact(ctx), s.Cleanup(ctx, false))
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func projectDir(projectID string) string {
	if safeName.MatchString(projectID) && projectID != "." && projectID != ".." {
		return projectID
	}
	return "x" + hex.EncodeToString([]byte(projectID))
}

func labelsKey(l map[string]string) string {
	b, _ := json.Marshal(l) // map keys are sorted; strings cannot fail
	return string(b)
}

// Write stores the profiles all or nothing. Blobs are written by the
// caller's goroutine; index rows of concurrent writers are committed
// together (group commit: one directory fsync and one SQLite transaction
// for all waiting writers).
func (s *DiskStore) Write(ctx context.Context, projectID string, ps []Profile) (err error) {
	if len(ps) == 0 {
		return nil
	}
	if projectID == "" {
		return fmt.Errorf("write profiles: empty project: %w", ErrInvalid)
	}
	req := &commitReq{project: projectID, ps: ps, dirs: map[string]bool{}, done: make(chan error, 1)}
	defer func() {
		if err != nil {
			for _, rel := range req.rels {
				os.Remove(filepath.Join(s.dir, "blobs", rel))
			}
		}
	}()
	for _, p := range ps {
		rel := filepath.Join(projectDir(projectID), p.Time.UTC().Format("2006010215"),
			fmt.Sprintf("%d-%s.pb.gz", p.Time.UnixNano(), randHex()))
		if err := s.writeBlob(rel, p.Data); err != nil {
			return err
		}
		req.rels = append(req.rels, rel)
		req.dirs[filepath.Dir(rel)] = true
	}
	s.pmu.Lock()
	s.pending = append(s.pending, req)
	s.pmu.Unlock()
	s.leader.Lock()
	select {
	case err := <-req.done: // an earlier leader committed it
		s.leader.Unlock()
		return err
	default:
	}
	s.pmu.Lock()
	group := s.pending
	s.pending = nil
	s.pmu.Unlock()
	cerr := s.commit(ctx, group)
	s.leader.Unlock()
	for _, r := range group {
		r.done <- cerr
	}
	return <-req.done
}

// commitReq is one Write waiting for its index rows to be committed.
type commitReq struct {
	project string
	ps      []Profile
	rels    []string
	dirs    map[string]bool
	done    chan error
}

// commit inserts the rows of every request in one transaction. The
// directories of the renamed blobs are not fsynced: after a power loss a
// row may name a blob whose rename was lost, which the startup cleanup
// removes (SQLite's WAL with synchronous=NORMAL gives the same durability
// to the row itself); a process crash loses nothing that was acknowledged.
func (s *DiskStore) commit(ctx context.Context, group []*commitReq) error {
	newSeries := map[string]int64{}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin profile index write: %w", err)
	}
	defer tx.Rollback()
	var n, size int
	for _, r := range group {
		for i, p := range r.ps {
			typeID := p.Type.ID()
			lk := labelsKey(p.Labels)
			key := r.project + "\x00" + typeID + "\x00" + lk
			id, ok := newSeries[key]
			if !ok {
				s.mu.Lock()
				id, ok = s.series[key]
				s.mu.Unlock()
			}
			if !ok {
				if _, err := tx.ExecContext(ctx, `INSERT INTO series (project, type, labels) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, r.project, typeID, lk); err != nil {
					return fmt.Errorf("insert series: %w", err)
				}
				if err := tx.QueryRowContext(ctx, `SELECT id FROM series WHERE project = ? AND type = ? AND labels = ?`, r.project, typeID, lk).Scan(&id); err != nil {
					return fmt.Errorf("look up series: %w", err)
				}
				newSeries[key] = id
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO profiles (series_id, time_ns, duration_ns, total, size, blob) VALUES (?, ?, ?, ?, ?, ?)`,
				id, p.Time.UnixNano(), int64(p.Duration), p.Total, len(p.Data), r.rels[i]); err != nil {
				return fmt.Errorf("insert profile row: %w", err)
			}
			n++
			size += len(p.Data)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit profile index write: %w", err)
	}
	s.mu.Lock()
	for k, id := range newSeries {
		s.series[k] = id
	}
	s.mu.Unlock()
	s.m.written.Add(float64(n))
	s.m.bytes.Add(float64(size))
	return nil
}

func randHex() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeBlob writes data durably at blobs/rel: temp file, fsync, rename.
func (s *DiskStore) writeBlob(rel string, data []byte) error {
	final := filepath.Join(s.dir, "blobs", rel)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return fmt.Errorf("create blob dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(final), ".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp blob: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, final)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write blob %s: %w", rel, werr)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open blob dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync blob dir %s: %w", dir, err)
	}
	return nil
}

// row is one index row with its series.
type row struct {
	id, seriesID, timeNS, durationNS, total, size int64
	blob                                          string
}

func (s *DiskStore) deleteRows(ctx context.Context, rows []row) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin delete: %w", err)
	}
	defer tx.Rollback()
	for _, r := range rows {
		if _, err := tx.ExecContext(ctx, `DELETE FROM profiles WHERE id = ?`, r.id); err != nil {
			return fmt.Errorf("delete profile row: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit delete: %w", err)
	}
	for _, r := range rows {
		os.Remove(filepath.Join(s.dir, "blobs", r.blob))
	}
	return nil
}

func (s *DiskStore) selectRows(ctx context.Context, db *sql.DB, query string, args ...any) ([]row, error) {
	rs, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query profile rows: %w", err)
	}
	defer rs.Close()
	var out []row
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.seriesID, &r.timeNS, &r.durationNS, &r.total, &r.size, &r.blob); err != nil {
			return nil, fmt.Errorf("scan profile row: %w", err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("read profile rows: %w", err)
	}
	return out, nil
}

const rowCols = `id, series_id, time_ns, duration_ns, total, size, blob`

// Retain deletes profiles older than Retention, then the oldest ones while
// the blobs exceed MaxBytes. Rows go first, blobs after.
func (s *DiskStore) Retain(ctx context.Context) error {
	cutoff := s.opts.Now().Add(-s.opts.Retention).UnixNano()
	for {
		rows, err := s.selectRows(ctx, s.r, `SELECT `+rowCols+` FROM profiles WHERE time_ns < ? ORDER BY time_ns LIMIT 1000`, cutoff)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			break
		}
		if err := s.deleteRows(ctx, rows); err != nil {
			return err
		}
		s.m.expired.Add(float64(len(rows)))
	}
	if s.opts.MaxBytes <= 0 {
		return nil
	}
	for {
		var total sql.NullInt64
		if err := s.r.QueryRowContext(ctx, `SELECT SUM(size) FROM profiles`).Scan(&total); err != nil {
			return fmt.Errorf("sum blob sizes: %w", err)
		}
		over := total.Int64 - s.opts.MaxBytes
		if over <= 0 {
			return nil
		}
		rows, err := s.selectRows(ctx, s.r, `SELECT `+rowCols+` FROM profiles ORDER BY time_ns LIMIT 1000`)
		if err != nil || len(rows) == 0 {
			return err
		}
		n := 0
		for n < len(rows) && over > 0 {
			over -= rows[n].size
			n++
		}
		if err := s.deleteRows(ctx, rows[:n]); err != nil {
			return err
		}
		s.m.expired.Add(float64(n))
	}
}

// Compact merges level-0 profiles older than CompactAfter into one profile
// per series per CompactInterval.
func (s *DiskStore) Compact(ctx context.Context) error {
	if s.opts.CompactAfter < 0 {
		return nil
	}
	iv := int64(s.opts.CompactInterval)
	cutoff := s.opts.Now().Add(-s.opts.CompactAfter).UnixNano()
	cutoff -= cutoff % iv // only whole intervals
	rows, err := s.selectRows(ctx, s.r, `SELECT `+rowCols+` FROM profiles WHERE level = 0 AND time_ns < ? ORDER BY series_id, time_ns LIMIT 20000`, cutoff)
	if err != nil {
		return err
	}
	for len(rows) > 0 {
		if ctx.Err() != nil {
			return nil
		}
		n := 1
		b := rows[0].timeNS - rows[0].timeNS%iv
		for n < len(rows) && rows[n].seriesID == rows[0].seriesID && rows[n].timeNS-rows[n].timeNS%iv == b {
			n++
		}
		if err := s.compactGroup(ctx, rows[:n]); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

func (s *DiskStore) compactGroup(ctx context.Context, rows []row) error {
	if len(rows) == 1 {
		if _, err := s.w.ExecContext(ctx, `UPDATE profiles SET level = 1 WHERE id = ?`, rows[0].id); err != nil {
			return fmt.Errorf("mark profile compacted: %w", err)
		}
		return nil
	}
	var typeID string
	if err := s.r.QueryRowContext(ctx, `SELECT type FROM series WHERE id = ?`, rows[0].seriesID).Scan(&typeID); err != nil {
		return fmt.Errorf("look up series type: %w", err)
	}
	t, err := ParseProfileType(typeID)
	if err != nil {
		return err
	}
	var ps []*profile.Profile
	var live []row
	start, end, total := rows[0].timeNS, int64(0), int64(0)
	for _, r := range rows {
		p, err := s.readBlob(r.blob)
		if err != nil {
			s.log.Warn("compaction skips unreadable blob", zap.String("blob", r.blob), zap.Error(err))
			continue
		}
		ps = append(ps, p)
		live = append(live, r)
		start = min(start, r.timeNS)
		end = max(end, r.timeNS+r.durationNS)
		total += r.total
	}
	if len(ps) == 0 {
		return nil
	}
	merged, err := profile.Merge(ps)
	if err != nil {
		for _, p := range ps {
			if err := onlySampleType(p, t); err != nil {
				return err
			}
		}
		if merged, err = profile.Merge(ps); err != nil {
			return fmt.Errorf("merge profiles of series %d: %w", rows[0].seriesID, err)
		}
	}
	var buf bytes.Buffer
	if err := merged.Write(&buf); err != nil {
		return fmt.Errorf("encode compacted profile: %w", err)
	}
	blobRel := filepath.Join(filepath.Dir(live[0].blob), fmt.Sprintf("%d-c-%s.pb.gz", start, randHex()))
	if err := s.writeBlob(blobRel, buf.Bytes()); err != nil {
		return err
	}
	if err := syncDir(filepath.Join(s.dir, "blobs", filepath.Dir(blobRel))); err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		os.Remove(filepath.Join(s.dir, "blobs", blobRel))
		return fmt.Errorf("begin compaction: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO profiles (series_id, time_ns, duration_ns, total, size, blob, level) VALUES (?, ?, ?, ?, ?, ?, 1)`,
		rows[0].seriesID, start, end-start, total, buf.Len(), blobRel); err != nil {
		os.Remove(filepath.Join(s.dir, "blobs", blobRel))
		return fmt.Errorf("insert compacted row: %w", err)
	}
	for _, r := range live {
		if _, err := tx.ExecContext(ctx, `DELETE FROM profiles WHERE id = ?`, r.id); err != nil {
			os.Remove(filepath.Join(s.dir, "blobs", blobRel))
			return fmt.Errorf("delete compacted row: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		os.Remove(filepath.Join(s.dir, "blobs", blobRel))
		return fmt.Errorf("commit compaction: %w", err)
	}
	for _, r := range live {
		os.Remove(filepath.Join(s.dir, "blobs", r.blob))
	}
	s.m.compacted.Add(float64(len(live)))
	return nil
}

// Cleanup removes temp files and blobs without an index row, and index
// rows whose blob is missing. At startup (all=true) nothing can be in
// flight, so every orphan goes; otherwise only those older than OrphanGrace.
func (s *DiskStore) Cleanup(ctx context.Context, all bool) error {
	graceCut := s.opts.Now().Add(-s.opts.OrphanGrace)
	old := func(info fs.FileInfo) bool { return all || info.ModTime().Before(graceCut) }
	tmpDir := filepath.Join(s.dir, "tmp")
	ents, err := os.ReadDir(tmpDir)
	if err != nil {
		return fmt.Errorf("read temp dir: %w", err)
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && old(info) {
			if os.Remove(filepath.Join(tmpDir, e.Name())) == nil {
				s.m.orphans.Inc()
			}
		}
	}
	rs, err := s.r.QueryContext(ctx, `SELECT id, blob FROM profiles`)
	if err != nil {
		return fmt.Errorf("list profile rows: %w", err)
	}
	indexed := map[string]int64{}
	for rs.Next() {
		var id int64
		var blob string
		if err := rs.Scan(&id, &blob); err != nil {
			rs.Close()
			return fmt.Errorf("scan profile row: %w", err)
		}
		indexed[blob] = id
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return fmt.Errorf("list profile rows: %w", err)
	}
	blobDir := filepath.Join(s.dir, "blobs")
	var dirs []string
	err = filepath.WalkDir(blobDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished meanwhile
		}
		if d.IsDir() {
			if path != blobDir {
				dirs = append(dirs, path)
			}
			return nil
		}
		rel, _ := filepath.Rel(blobDir, path)
		if _, ok := indexed[rel]; ok {
			delete(indexed, rel)
			return nil
		}
		if info, err := d.Info(); err == nil && old(info) {
			if os.Remove(path) == nil {
				s.m.orphans.Inc()
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk blobs: %w", err)
	}
	if len(indexed) > 0 {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin dangling row removal: %w", err)
		}
		defer tx.Rollback()
		n := 0
		for blob, id := range indexed {
			if _, err := os.Stat(filepath.Join(blobDir, blob)); err == nil {
				continue // written during the walk
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM profiles WHERE id = ?`, id); err != nil {
				return fmt.Errorf("delete dangling row: %w", err)
			}
			n++
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit dangling row removal: %w", err)
		}
		if n > 0 {
			s.log.Warn("removed index rows without a blob", zap.Int("rows", n))
		}
		s.m.dangling.Add(float64(n))
	}
	if all {
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			os.Remove(d) // only succeeds when empty
		}
	}
	return nil
}

func (s *DiskStore) readBlob(rel string) (*profile.Profile, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, "blobs", rel))
	if err != nil {
		return nil, fmt.Errorf("read blob: %w", err)
	}
	return parseBlob(data)
}

func parseBlob(data []byte) (*profile.Profile, error) {
	if len(data) > 2 && data[0] == 0x1f && data[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("gunzip blob: %w", err)
		}
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(zr); err != nil {
			return nil, fmt.Errorf("gunzip blob: %w", err)
		}
		data = buf.Bytes()
	}
	p, err := profile.ParseUncompressed(data)
	if err != nil {
		return nil, fmt.Errorf("parse blob: %w", err)
	}
	return p, nil
}

// Stats reports the number of index rows and blob files, for tests and
// the admin.
func (s *DiskStore) Stats(ctx context.Context) (rows, blobs int, err error) {
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM profiles`).Scan(&rows); err != nil {
		return 0, 0, fmt.Errorf("count profile rows: %w", err)
	}
	err = filepath.WalkDir(filepath.Join(s.dir, "blobs"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(d.Name(), ".pb.gz") {
			blobs++
		}
		return nil
	})
	return rows, blobs, err
}
