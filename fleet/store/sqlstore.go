package store

import (
	"context"
	"database/sql"
)

// SQL is the part of both SQL backends that is the same statements, in ?
// placeholders, over a backend's handles: config versions, assignments
// and rollouts (configsql.go), releases (releasesql.go) and
// organizations, users, memberships and sessions (usersql.go). A backend
// embeds it.
type SQL struct {
	read     RowQueryer
	write    Conn
	inTx     func(ctx context.Context, what string, f func(Conn) error) error
	mapErr   func(error) error
	isUnique func(error) bool
	lockKey  func(ctx context.Context, tx Conn, key string) error
	prepared func(ctx context.Context, query string) (*sql.Stmt, error)
}

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
	s := &SQL{read: b.Read, write: b.Write, inTx: b.InTx, mapErr: b.MapErr, isUnique: b.IsUnique, lockKey: b.LockKey, prepared: b.Prepared}
	if s.mapErr == nil {
		s.mapErr = func(err error) error { return err }
	}
	return s
}
