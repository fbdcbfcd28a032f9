package postgres

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/fleetprof/fleetprof/fleet/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key held while migrating, so that
// replicas starting at once migrate once.
const migrationLock int64 = 0x666c656574_01 // "fleet" 1

// Options configures Open.
type Options struct {
	// MaxConns is the pool size; 0 means 16.
	MaxConns int
	// ConnectTimeout bounds dialing one connection; 0 means 5s.
	ConnectTimeout time.Duration
}

// Store is a store.Store (and store.Users) on PostgreSQL. Several fleet
// replicas may share one database. The pool reconnects by itself after a
// server restart: a request made while the server is down fails, the
// next one after it is back succeeds.
type Store struct {
	db  rdb
	cfg *pgx.ConnConfig // for connections outside the pool (the bus listener)
	// SQL is the statements both backends share (store/*sql.go).
	*store.SQL
}

var (
	_ store.Store = (*Store)(nil)
	_ store.Users = (*Store)(nil)
)

// Open connects to the database at dsn (a postgres:// URL or key=value
// string) and applies pending migrations. A nil o means defaults.
func Open(ctx context.Context, dsn string, o *Options) (*Store, error) {
	if o == nil {
		o = &Options{}
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	cfg, err := pgconnConfig(dsn, o.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(o.MaxConns)
	db.SetMaxIdleConns(o.MaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: rdb{db}, cfg: cfg}
	s.SQL = store.NewSQL(store.SQLBackend{Read: s.db, Write: s.db, IsUnique: isUnique,
		LockKey: func(ctx context.Context, tx store.Conn, key string) error {
			_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext(?))`, key)
			return err
		},
		InTx: func(ctx context.Context, what string, f func(store.Conn) error) error {
			return s.inTx(ctx, what, func(tx rtx) error { return f(tx) })
		}})
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() error { return s.db.Close() }

// DB exposes the pool for health checks.
func (s *Store) DB() *sql.DB { return s.db.DB }

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("lock migrations: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock)
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create migrations table: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		v := strings.TrimSuffix(path.Base(n), ".sql")
		var one int
		err := conn.QueryRowContext(ctx, `SELECT 1 FROM schema_migrations WHERE version = $1`, v).Scan(&one)
		if err == nil {
			continue
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("check migration %s: %w", v, err)
		}
		body, err := migrations.ReadFile(n)
		if err != nil {
			return fmt.Errorf("read migration %s: %w", v, err)
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migration %s: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %s: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)`, v, time.Now().Unix()); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %s: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %s: %w", v, err)
		}
	}
	return nil
}

// Migrations lists the applied migration versions, oldest first.
func (s *Store) Migrations(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("list migrations: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// rebind turns the ? placeholders of the shared SQL into $1, $2, …
// (none of our statements has a literal question mark).
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// rdb and rtx rebind placeholders, so the SQL reads like the SQLite
// store's.
type rdb struct{ *sql.DB }

func (d rdb) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return d.DB.ExecContext(ctx, rebind(q), args...)
}

func (d rdb) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return d.DB.QueryContext(ctx, rebind(q), args...)
}

func (d rdb) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return d.DB.QueryRowContext(ctx, rebind(q), args...)
}

func (d rdb) BeginTx(ctx context.Context, o *sql.TxOptions) (rtx, error) {
	tx, err := d.DB.BeginTx(ctx, o)
	return rtx{tx}, err
}

type rtx struct{ *sql.Tx }

func (t rtx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, rebind(q), args...)
}

func (t rtx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, rebind(q), args...)
}

func (t rtx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, rebind(q), args...)
}

func (t rtx) PrepareContext(ctx context.Context, q string) (*sql.Stmt, error) {
	return t.Tx.PrepareContext(ctx, rebind(q))
}

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

// Projects.

// Tokens.

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
		res, err = s.db.ExecContext(ctx, `INSERT INTO agents(id, project_id, doc, credential_id, credential_hash, row_version, updated_at) VALUES (?,?,?,?,?,?,?)`,
			a.ID, a.ProjectID, string(doc), a.CredentialID, store.CredentialHashColumn(a), a.RowVersion, ms(now))
		if isUnique(err) {
			a.RowVersion = prev
			return fmt.Errorf("create agent %s: %w", a.ID, store.ErrConflict)
		}
	} else {
		res, err = s.db.ExecContext(ctx, `UPDATE agents SET project_id = ?, doc = ?, credential_id = ?, credential_hash = ?, row_version = ?, updated_at = ? WHERE id = ? AND row_version = ?`,
			a.ProjectID, string(doc), a.CredentialID, store.CredentialHashColumn(a), a.RowVersion, ms(now), a.ID, prev)
	}
	if err != nil {
		a.RowVersion = prev
		return fmt.Errorf("upsert agent: %w", err)
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
	err := s.db.QueryRowContext(ctx, `SELECT doc, row_version FROM agents WHERE id = ?`, id).Scan(&doc, &ver)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("agent %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	return store.DecodeAgent(doc, ver)
}

// briefCols are the columns of a Brief agent listing (store.BriefFields),
// read from the JSONB record without decoding it in Go.
const briefCols = `id, project_id, row_version, COALESCE(doc->'labels', '{}'::jsonb)::text,
	COALESCE(doc->>'platform', ''), COALESCE(doc->>'hostname', ''), COALESCE(doc->>'version', ''),
	COALESCE((doc->>'connected')::boolean, false), COALESCE((doc->>'healthy')::boolean, false), COALESCE(doc->>'health', ''),
	COALESCE(doc->>'configHash', ''), COALESCE(doc->>'configStatus', ''), COALESCE(doc->>'configError', '')`

func scanBrief(rows *sql.Rows) (*store.Agent, error) {
	a := &store.Agent{}
	var labels string
	if err := rows.Scan(&a.ID, &a.ProjectID, &a.RowVersion, &labels, &a.Platform, &a.Hostname, &a.Version,
		&a.Connected, &a.Healthy, &a.Health, &a.ConfigHash, &a.ConfigStatus, &a.ConfigError); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(labels), &a.Labels); err != nil {
		return nil, fmt.Errorf("decode labels of agent %s: %w", a.ID, err)
	}
	return a, nil
}

func (s *Store) ListAgents(ctx context.Context, f store.AgentFilter) ([]*store.Agent, error) {
	q := `SELECT doc, row_version FROM agents`
	if f.Brief {
		q = `SELECT ` + briefCols + ` FROM agents`
	}
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
		return nil, fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	var out []*store.Agent
	for rows.Next() {
		var a *store.Agent
		if f.Brief {
			if a, err = scanBrief(rows); err != nil {
				return nil, fmt.Errorf("list agents: %w", err)
			}
		} else {
			var doc string
			var ver int64
			if err := rows.Scan(&doc, &ver); err != nil {
				return nil, fmt.Errorf("list agents: %w", err)
			}
			if a, err = store.DecodeAgent(doc, ver); err != nil {
				return nil, err
			}
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

// Audit.

// pgconnConfig parses dsn for the stdlib adapter.
func pgconnConfig(dsn string, connectTimeout time.Duration) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse postgres dsn: %w", err)
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > connectTimeout {
		cfg.ConnectTimeout = connectTimeout
	}
	return cfg, nil
}
