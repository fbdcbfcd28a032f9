package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/fleetprof/fleetprof/fleet/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a store.Store on one SQLite file.
type Store struct {
	// db serves reads (a pool: WAL readers never wait for the writer).
	db *sql.DB
	// w serves writes, on one connection: writers queue in Go instead of
	// sleeping in SQLite's busy handler while holding pooled connections
	// that readers need (a storm of enrollments starved reads into
	// timeouts).
	w *sql.DB
	// stmts caches the prepared statements of the hot paths (agent
	// records, assignments), which every OpAMP message and config push
	// runs: preparing them each time was a tenth of the fleet's CPU.
	stmts sync.Map // query → *sql.Stmt
	// agents group-commits agent record updates (agentwrites.go).
	agents *agentWriter
	// SQL is the statements both backends share (store/*sql.go).
	*store.SQL
}

// stmt returns query prepared once.
func (s *Store) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", full(err))
	}
	if old, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return old.(*sql.Stmt), nil
	}
	return st, nil
}

var _ store.Store = (*Store)(nil)

// readConns is the size of the read connection pool.
const readConns = 8

// Open opens (creating if needed) the database at path and applies
// pending migrations.
//
// The database runs in WAL mode with synchronous=NORMAL: a committed
// transaction survives a crash of the process (SIGKILL) because the WAL is
// in the kernel's page cache, and only a power loss or kernel crash can
// roll back the last transactions — never corrupt the file. That is the
// usual trade for an embedded control-plane store; PostgreSQL mode keeps
// its own fsync settings.
func Open(ctx context.Context, file string) (*Store, error) {
	dsn := "file:" + file + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(ON)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", file, full(err))
	}
	// Readers keep their connections: each holds its prepared statements
	// and its page cache. With database/sql's default of 2 idle, a
	// reconnect storm at 19,000 agents opened connections all along and
	// prepared the record read again on each (6% of the fleet's CPU),
	// reading pages the closed connection had cached.
	db.SetMaxOpenConns(readConns)
	db.SetMaxIdleConns(readConns)
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", file, full(err))
	}
	w.SetMaxOpenConns(1)
	s := &Store{db: db, w: w}
	s.SQL = store.NewSQL(store.SQLBackend{Read: db, Write: w, MapErr: full, IsUnique: isUnique, Prepared: s.stmt,
		InTx: func(ctx context.Context, what string, f func(store.Conn) error) error {
			return s.inTx(ctx, what, func(tx *sql.Tx) error { return f(tx) })
		}})
	if err := s.migrate(ctx); err != nil {
		db.Close()
		w.Close()
		return nil, err
	}
	s.agents = newAgentWriter(w)
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.agents.close()
	return errors.Join(s.w.Close(), s.db.Close())
}

// DB exposes the handle for tests and health checks.
func (s *Store) DB() *sql.DB { return s.db }

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create migrations table: %w", full(err))
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", full(err))
	}
	sort.Strings(names)
	for _, n := range names {
		v := strings.TrimSuffix(path.Base(n), ".sql")
		var one int
		err := s.db.QueryRowContext(ctx, `SELECT 1 FROM schema_migrations WHERE version = ?`, v).Scan(&one)
		if err == nil {
			continue
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("check migration %s: %w", v, full(err))
		}
		body, err := migrations.ReadFile(n)
		if err != nil {
			return fmt.Errorf("read migration %s: %w", v, full(err))
		}
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migration %s: %w", v, full(err))
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %s: %w", v, full(err))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, time.Now().Unix()); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %s: %w", v, full(err))
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %s: %w", v, full(err))
		}
	}
	return nil
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// diskFull marks an error of a full disk so that it matches
// store.ErrDiskFull, keeping the driver's error in the chain.
type diskFull struct{ err error }

func (d diskFull) Error() string   { return "fleet data disk is full: " + d.err.Error() }
func (d diskFull) Unwrap() []error { return []error{store.ErrDiskFull, d.err} }

// full returns err marked as store.ErrDiskFull when SQLite or the kernel
// says there is no room left (SQLITE_FULL, ENOSPC, EDQUOT), else err.
func full(err error) error {
	if err == nil || errors.Is(err, store.ErrDiskFull) {
		return err
	}
	var se *sqlite.Error
	if (errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_FULL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return diskFull{err}
	}
	return err
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// Agents. The record is stored as a JSON document; project and version
// are columns for filtering and optimistic concurrency.

func (s *Store) UpsertAgent(ctx context.Context, a *store.Agent) error {
	now := time.Now().UTC()
	if a.CreatedAt.IsZero() {
		a.CreatedAt = now
	}
	a.UpdatedAt = now
	prev := a.RowVersion
	a.RowVersion = prev + 1
	doc, err := store.EncodeAgent(a)
	if err != nil {
		a.RowVersion = prev
		return err
	}
	var res sql.Result
	if prev == 0 {
		res, err = s.w.ExecContext(ctx, `INSERT INTO agents(id, project_id, doc, credential_id, credential_hash, row_version, updated_at) VALUES (?,?,?,?,?,?,?)`,
			a.ID, a.ProjectID, string(doc), a.CredentialID, store.CredentialHashColumn(a), a.RowVersion, ms(now))
		if isUnique(err) {
			a.RowVersion = prev
			return fmt.Errorf("create agent %s: %w", a.ID, store.ErrConflict)
		}
	} else {
		n, err := s.agents.write(ctx, &agentWrite{projectID: a.ProjectID, id: a.ID, doc: string(doc), credID: a.CredentialID, credHash: store.CredentialHashColumn(a), version: a.RowVersion, prev: prev, at: ms(now)})
		if err != nil {
			a.RowVersion = prev
			return fmt.Errorf("upsert agent: %w", err)
		}
		if n == 0 {
			a.RowVersion = prev
			return fmt.Errorf("update agent %s at version %d: %w", a.ID, prev, store.ErrConflict)
		}
		return nil
	}
	if err != nil {
		a.RowVersion = prev
		return fmt.Errorf("upsert agent: %w", full(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		a.RowVersion = prev
		return fmt.Errorf("update agent %s at version %d: %w", a.ID, prev, store.ErrConflict)
	}
	return nil
}

func (s *Store) AgentByID(ctx context.Context, id string) (*store.Agent, error) {
	var doc string
	var ver int64
	st, err := s.stmt(ctx, `SELECT doc, row_version FROM agents WHERE id = ?`)
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	err = st.QueryRowContext(ctx, id).Scan(&doc, &ver)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("agent %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", full(err))
	}
	return store.DecodeAgent(doc, ver)
}

func (s *Store) ListAgents(ctx context.Context, f store.AgentFilter) ([]*store.Agent, error) {
	q := `SELECT doc, row_version FROM agents`
	var args []any
	var where []string
	if f.ProjectID != "" {
		where = append(where, `project_id = ?`)
		args = append(args, f.ProjectID)
	}
	if r := f.InRollout; r != nil {
		where = append(where, `id IN (SELECT agent_id FROM rollout_agents WHERE rollout_id = ? AND stage = ? AND state = ?)`)
		args = append(args, r.RolloutID, r.Stage, r.State)
	}
	if f.NotInRollout != "" {
		where = append(where, `id NOT IN (SELECT agent_id FROM rollout_agents WHERE rollout_id = ?)`)
		args = append(args, f.NotInRollout)
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", full(err))
	}
	defer rows.Close()
	// A brief listing decodes only the brief fields, in Go: ten
	// json_extract calls per record in SQL took twice as long.
	decode := store.DecodeAgent
	if f.Brief {
		decode = store.DecodeBrief
	}
	var out []*store.Agent
	for rows.Next() {
		var doc string
		var ver int64
		if err := rows.Scan(&doc, &ver); err != nil {
			return nil, fmt.Errorf("list agents: %w", full(err))
		}
		a, err := decode(doc, ver)
		if err != nil {
			return nil, err
		}
		if f.Match == nil || f.Match(a) {
			out = append(out, a)
		}
	}
	return out, rows.Err()
}

func (s *Store) ListAgentCredentials(ctx context.Context) ([]store.AgentCredential, error) {
	return store.ListAgentCredentials(ctx, s.db)
}
