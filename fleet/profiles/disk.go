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
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
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
	// IndexDSN, if set, is a PostgreSQL connection string: the index then
	// lives there (schema fleetprof_profiles) instead of dir/index.db, and
	// stores on several hosts that share it and one Blobs (an S3Blobs with
	// the same bucket and prefix) see each other's profiles.
	IndexDSN string
	// Blobs holds the profile blobs; nil means a DirBlobs in the store's
	// directory (dir/blobs). Several stores must not share one Blobs unless
	// they share the index too: each store's cleanup removes the blobs its
	// index does not know.
	Blobs Blobs
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
// pprof blob (a file under dir/blobs, or an object in a bucket: see
// Options.Blobs), indexed in the SQLite database dir/index.db. A blob is
// durable before its index row is committed, so a crash or a failed write
// leaves at worst an orphan blob, which the cleanup removes.
type DiskStore struct {
	dir   string
	opts  Options
	log   *zap.Logger
	blobs Blobs
	w     *sql.DB // one connection (SQLite): writes are serialized
	r     *sql.DB
	pg    bool // the index is PostgreSQL: placeholders are $n

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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`

// pgSchema is the index on PostgreSQL, in its own schema (search_path).
// Labels are unique through their hash: a btree entry has a size limit.
const pgSchema = `
CREATE TABLE IF NOT EXISTS series (
  id      BIGSERIAL PRIMARY KEY,
  project TEXT NOT NULL,
  type    TEXT NOT NULL,
  labels  TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS series_key ON series (project, type, md5(labels));
CREATE TABLE IF NOT EXISTS profiles (
  id          BIGSERIAL PRIMARY KEY,
  series_id   BIGINT NOT NULL REFERENCES series(id),
  time_ns     BIGINT NOT NULL,
  duration_ns BIGINT NOT NULL,
  total       BIGINT NOT NULL,
  size        BIGINT NOT NULL,
  blob        TEXT NOT NULL UNIQUE,
  level       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS profiles_series_time ON profiles (series_id, time_ns);
CREATE INDEX IF NOT EXISTS profiles_time ON profiles (time_ns);
CREATE INDEX IF NOT EXISTS profiles_level_time ON profiles (level, time_ns);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`

// pgSchemaName holds the index tables on PostgreSQL.
const pgSchemaName = "fleetprof_profiles"

// openPostgres opens the shared index: a writer pool and a reader pool
// whose connections use the index's schema, created if needed under an
// advisory lock (replicas may start at once).
func openPostgres(ctx context.Context, dsn string) (w, r *sql.DB, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("profile index dsn: %w: %w", ErrInvalid, err)
	}
	cfg.RuntimeParams["search_path"] = pgSchemaName
	w = stdlib.OpenDB(*cfg)
	conn, err := w.Conn(ctx)
	if err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("connect to the profile index: %w", err)
	}
	defer conn.Close()
	const lock = 0x66707072 // "fppr"
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lock); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("lock profile index schema: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lock)
	if _, err := conn.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgSchemaName+`;`+pgSchema); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("create profile index schema: %w", err)
	}
	w.SetMaxOpenConns(2)
	r = stdlib.OpenDB(*cfg)
	r.SetMaxOpenConns(4)
	return w, r, nil
}

// q adapts a query written with ? placeholders to the index's database.
func (s *DiskStore) q(query string) string {
	if !s.pg {
		return query
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// checkBlobsLocation records in the index where its blobs are
// (Blobs.String) and refuses other blobs: an index opened on the wrong
// bucket, prefix or backend would take its rows for dangling and delete
// them. An index from before the record, with rows, had local blobs.
func (s *DiskStore) checkBlobsLocation(ctx context.Context) error {
	want := s.blobs.String()
	var have string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT value FROM meta WHERE key = ?`), "blobs").Scan(&have)
	if errors.Is(err, sql.ErrNoRows) {
		var n int
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM profiles LIMIT 1) AS x`).Scan(&n); err != nil {
			return fmt.Errorf("read profile index: %w", err)
		}
		have = want
		if n > 0 {
			have = localBlobs
		}
		if _, err := s.w.ExecContext(ctx, s.q(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING`), "blobs", have); err != nil {
			return fmt.Errorf("record blob location: %w", err)
		}
		// Another replica may have recorded it first.
		if err := s.r.QueryRowContext(ctx, s.q(`SELECT value FROM meta WHERE key = ?`), "blobs").Scan(&have); err != nil {
			return fmt.Errorf("read blob location: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("read blob location: %w", err)
	}
	if have != want {
		return fmt.Errorf("the profile index in %s holds profiles whose blobs are at %s, not %s (move the index aside to start afresh): %w",
			s.indexName(), have, want, ErrInvalid)
	}
	return nil
}

func (s *DiskStore) indexName() string {
	if s.pg {
		return "PostgreSQL (schema " + pgSchemaName + ")"
	}
	return filepath.Join(s.dir, "index.db")
}

// Open opens (creating if needed) the store in dir, the store's own
// directory (the fleet passes <data-dir>/profiles), and runs a cleanup of
// orphan blobs and dangling index rows before returning.
func Open(ctx context.Context, dir string, opts *Options) (*DiskStore, error) {
	o := opts.withDefaults()
	for _, d := range []string{dir, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create profile store dir: %w", err)
		}
	}
	blobs := o.Blobs
	if blobs == nil {
		db, err := NewDirBlobs(filepath.Join(dir, "blobs"))
		if err != nil {
			return nil, err
		}
		blobs = db
	}
	var w, r *sql.DB
	if o.IndexDSN != "" {
		var err error
		if w, r, err = openPostgres(ctx, o.IndexDSN); err != nil {
			return nil, err
		}
	} else {
		dsn := "file:" + filepath.Join(dir, "index.db") +
			"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
		var err error
		w, err = sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("open profile index: %w", err)
		}
		w.SetMaxOpenConns(1)
		if _, err := w.ExecContext(ctx, schema); err != nil {
			w.Close()
			return nil, fmt.Errorf("create profile index schema: %w", err)
		}
		r, err = sql.Open("sqlite", dsn)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("open profile index: %w", err)
		}
		r.SetMaxOpenConns(4)
	}
	s := &DiskStore{dir: dir, opts: o, log: o.Logger, blobs: blobs, w: w, r: r, pg: o.IndexDSN != "", series: map[string]int64{}}
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
	if err := s.checkBlobsLocation(ctx); err != nil {
		s.Close()
		return nil, err
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

// putConcurrency bounds the blobs of one Write stored at once.
const putConcurrency = 8

// Write stores the profiles all or nothing: blobs first (by the caller's
// goroutine and a few helpers), then the index rows. Rows of concurrent
// writers are committed together (group commit: one SQLite transaction for
// all waiting writers). When a blob cannot be stored no row is written,
// the blobs already stored are deleted (or left to the orphan cleanup),
// and the error wraps ErrUnavailable if the backend is an unreachable
// object store.
func (s *DiskStore) Write(ctx context.Context, projectID string, ps []Profile) (err error) {
	if len(ps) == 0 {
		return nil
	}
	if projectID == "" {
		return fmt.Errorf("write profiles: empty project: %w", ErrInvalid)
	}
	req := &commitReq{project: projectID, ps: ps, rels: make([]string, len(ps)), done: make(chan error, 1)}
	for i, p := range ps {
		req.rels[i] = blobKey(projectID, p.Time)
	}
	defer func() {
		if err != nil {
			// Every key of the write is deleted, not only those whose Put
			// returned: a Put cancelled by another's failure may have been
			// stored by the object store all the same. Deleting a missing
			// key is not an error; anything still left goes to the orphan
			// cleanup.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if derr := s.blobs.Delete(dctx, req.rels...); derr != nil {
				s.log.Warn("blobs of a failed write left to the orphan cleanup", zap.Error(derr))
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(putConcurrency)
	for i, p := range ps {
		g.Go(func() error { return s.blobs.Put(gctx, req.rels[i], p.Data) })
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("store profile blobs: %w", err)
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
				if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO series (project, type, labels) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`), r.project, typeID, lk); err != nil {
					return fmt.Errorf("insert series: %w", err)
				}
				if err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM series WHERE project = ? AND type = ? AND labels = ?`), r.project, typeID, lk).Scan(&id); err != nil {
					return fmt.Errorf("look up series: %w", err)
				}
				newSeries[key] = id
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO profiles (series_id, time_ns, duration_ns, total, size, blob) VALUES (?, ?, ?, ?, ?, ?)`),
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
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM profiles WHERE id = ?`), r.id); err != nil {
			return fmt.Errorf("delete profile row: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit delete: %w", err)
	}
	keys := make([]string, len(rows))
	for i, r := range rows {
		keys[i] = r.blob
	}
	if err := s.blobs.Delete(ctx, keys...); err != nil {
		s.log.Warn("blobs of deleted rows left to the orphan cleanup", zap.Error(err))
	}
	return nil
}

func (s *DiskStore) selectRows(ctx context.Context, db *sql.DB, query string, args ...any) ([]row, error) {
	rs, err := db.QueryContext(ctx, s.q(query), args...)
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
		if err := s.r.QueryRowContext(ctx, s.q(`SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM profiles`)).Scan(&total); err != nil {
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
		if _, err := s.w.ExecContext(ctx, s.q(`UPDATE profiles SET level = 1 WHERE id = ?`), rows[0].id); err != nil {
			return fmt.Errorf("mark profile compacted: %w", err)
		}
		return nil
	}
	var typeID string
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT type FROM series WHERE id = ?`), rows[0].seriesID).Scan(&typeID); err != nil {
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
		p, err := s.readBlob(ctx, r.blob)
		if errors.Is(err, ErrUnavailable) {
			return err
		}
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
	blobRel := path.Join(path.Dir(live[0].blob), fmt.Sprintf("%d-c-%s.pb.gz", start, randHex()))
	if err := s.blobs.Put(ctx, blobRel, buf.Bytes()); err != nil {
		return err
	}
	if d, ok := s.blobs.(*DirBlobs); ok {
		// The originals go after the commit: the rename must be durable first.
		if err := d.syncKeyDir(blobRel); err != nil {
			return err
		}
	}
	committed := false
	defer func() {
		if !committed {
			s.blobs.Delete(context.WithoutCancel(ctx), blobRel)
		}
	}()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin compaction: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO profiles (series_id, time_ns, duration_ns, total, size, blob, level) VALUES (?, ?, ?, ?, ?, ?, 1)`),
		rows[0].seriesID, start, end-start, total, buf.Len(), blobRel); err != nil {
		return fmt.Errorf("insert compacted row: %w", err)
	}
	for _, r := range live {
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM profiles WHERE id = ?`), r.id)
		if err != nil {
			return fmt.Errorf("delete compacted row: %w", err)
		}
		if n, err := res.RowsAffected(); err == nil && n != 1 {
			// Removed meanwhile (retention, or another compactor on a
			// shared index): give up this group, the next pass redoes it.
			return nil
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit compaction: %w", err)
	}
	committed = true
	keys := make([]string, len(live))
	for i, r := range live {
		keys[i] = r.blob
	}
	if err := s.blobs.Delete(ctx, keys...); err != nil {
		s.log.Warn("compacted blobs left to the orphan cleanup", zap.Error(err))
	}
	s.m.compacted.Add(float64(len(live)))
	return nil
}

// Cleanup removes temp files and blobs without an index row, and index
// rows whose blob is missing. At startup (all=true) with blobs that only
// this store writes (Blobs.Exclusive), nothing can be in flight, so every
// orphan goes; otherwise only those older than OrphanGrace.
func (s *DiskStore) Cleanup(ctx context.Context, all bool) error {
	graceCut := s.opts.Now().Add(-s.opts.OrphanGrace)
	tmpDir := filepath.Join(s.dir, "tmp") // this store's own
	ents, err := os.ReadDir(tmpDir)
	if err != nil {
		return fmt.Errorf("read temp dir: %w", err)
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && (all || info.ModTime().Before(graceCut)) {
			if os.Remove(filepath.Join(tmpDir, e.Name())) == nil {
				s.m.orphans.Inc()
			}
		}
	}
	rs, err := s.r.QueryContext(ctx, s.q(`SELECT id, blob FROM profiles`))
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
	all = all && s.blobs.Exclusive()
	old := func(t time.Time) bool { return all || t.Before(graceCut) }
	var orphans []string
	err = s.blobs.List(ctx, "", func(b BlobInfo) error {
		if _, ok := indexed[b.Key]; ok {
			delete(indexed, b.Key)
			return nil
		}
		if old(b.Modified) {
			orphans = append(orphans, b.Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for len(orphans) > 0 {
		n := min(len(orphans), 1000)
		if err := s.blobs.Delete(ctx, orphans[:n]...); err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		s.m.orphans.Add(float64(n))
		orphans = orphans[n:]
	}
	if len(indexed) > 0 {
		var dangling []int64
		for blob, id := range indexed {
			ok, err := s.blobs.Exists(ctx, blob)
			if err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
			if !ok { // else written during the listing
				dangling = append(dangling, id)
			}
		}
		if err := s.deleteRowIDs(ctx, dangling); err != nil {
			return err
		}
		if len(dangling) > 0 {
			s.log.Warn("removed index rows without a blob", zap.Int("rows", len(dangling)))
		}
		s.m.dangling.Add(float64(len(dangling)))
	}
	if d, ok := s.blobs.(*DirBlobs); ok && all {
		d.pruneEmptyDirs()
	}
	return nil
}

func (s *DiskStore) deleteRowIDs(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin dangling row removal: %w", err)
	}
	defer tx.Rollback()
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM profiles WHERE id = ?`), id); err != nil {
			return fmt.Errorf("delete dangling row: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit dangling row removal: %w", err)
	}
	return nil
}

func (s *DiskStore) readBlob(ctx context.Context, key string) (*profile.Profile, error) {
	data, err := s.blobs.Get(ctx, key)
	if err != nil {
		return nil, err
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

// Stats reports the number of index rows and of blobs (temp files not
// counted), for tests and the admin.
func (s *DiskStore) Stats(ctx context.Context) (rows, blobs int, err error) {
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM profiles`)).Scan(&rows); err != nil {
		return 0, 0, fmt.Errorf("count profile rows: %w", err)
	}
	err = s.blobs.List(ctx, "", func(b BlobInfo) error {
		if strings.HasSuffix(b.Key, ".pb.gz") && !strings.HasPrefix(path.Base(b.Key), ".tmp-") {
			blobs++
		}
		return nil
	})
	return rows, blobs, err
}

// Blobs returns where the store keeps its blobs.
func (s *DiskStore) Blobs() Blobs { return s.blobs }
