package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// SQL is the part of both SQL backends that is the same statements, in ?
// placeholders, over a backend's handles: projects, tokens and the audit
// log (tokensql.go), config versions, assignments and rollouts
// (configsql.go), releases (releasesql.go) and organizations, users,
// memberships and sessions (usersql.go). A backend embeds it.
type SQL struct{ b SQLBackend }

// RowQueryer runs queries in ? placeholders: a backend's database handle.
type RowQueryer interface {
	Queryer
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Conn runs statements and queries in ? placeholders: a backend's
// database handle or transaction.
type Conn interface {
	Execer
	RowQueryer
}

// SQLBackend is what SQL runs on.
type SQLBackend struct {
	// Read serves queries, Write single statements.
	Read  RowQueryer
	Write Conn
	// InTx runs f in one transaction, named what in its errors, and
	// returns ErrConflict and ErrNotFound from f as they are.
	InTx func(ctx context.Context, what string, f func(Conn) error) error
	// MapErr is the backend's own error mapping (SQLite: a full disk is
	// ErrDiskFull); nil is none.
	MapErr func(error) error
	// IsUnique reports a unique-key violation.
	IsUnique func(error) bool
	// LockKey, if set, takes a lock on key until tx ends (PostgreSQL:
	// replicas that create config versions of one project at once).
	LockKey func(ctx context.Context, tx Conn, key string) error
	// Prepared, if set, returns query prepared once (SQLite: the hot
	// reads every OpAMP report runs).
	Prepared func(ctx context.Context, query string) (*sql.Stmt, error)
}

// NewSQL returns the shared statements over b.
func NewSQL(b SQLBackend) *SQL {
	if b.MapErr == nil {
		b.MapErr = func(err error) error { return err }
	}
	return &SQL{b: b}
}

// fromMillis and fromNullMillis read the Unix-millisecond columns.
func fromMillis(v int64) time.Time { return time.UnixMilli(v).UTC() }

func fromNullMillis(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMillis(v.Int64)
	return &t
}

// queryRows runs q on db and scans each row with scan; what names the
// query in errors.
func queryRows[T any](ctx context.Context, db Queryer, mapErr func(error) error, what string, scan func(*sql.Rows) (T, error), q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, mapErr(err))
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, mapErr(err))
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, mapErr(err))
	}
	return out, nil
}

type rowScanner interface{ Scan(...any) error }
