package store

import (
	"context"
	"database/sql"
	"errors"
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

// insert runs an INSERT on the write connection; what names it in errors,
// which wrap ErrConflict when the row exists (a unique key) and the
// backend's mapping of any other error (a full disk) otherwise.
func (s *SQL) insert(ctx context.Context, what, q string, args ...any) error {
	_, err := s.b.Write.ExecContext(ctx, q, args...)
	if s.b.IsUnique(err) {
		return fmt.Errorf("%s: %w", what, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, s.b.MapErr(err))
	}
	return nil
}

// rowErr names the error of a one-row read: no row is ErrNotFound, named
// by notFound (a format, with args); any other is named by what, mapped
// by the backend.
func (s *SQL) rowErr(err error, what, notFound string, args ...any) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w", fmt.Sprintf(notFound, args...), ErrNotFound)
	default:
		return fmt.Errorf("%s: %w", what, s.b.MapErr(err))
	}
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
