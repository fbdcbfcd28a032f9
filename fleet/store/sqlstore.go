package store

import (
	"context"
	"database/sql"
)

// SQL is the part of both SQL backends that is the same statements, in ?
// placeholders, over a backend's handles: releases (releasesql.go) and
// organizations, users, memberships and sessions (usersql.go). A backend
// embeds it.
type SQL struct {
	read     RowQueryer
	write    Execer
	inTx     func(ctx context.Context, what string, f func(Tx) error) error
	mapErr   func(error) error
	isUnique func(error) bool
}

// RowQueryer runs queries in ? placeholders: a backend's database handle.
type RowQueryer interface {
	Queryer
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Tx is a backend's transaction, in ? placeholders.
type Tx interface {
	Execer
	Queryer
}

// SQLBackend is what SQL runs on.
type SQLBackend struct {
	// Read serves queries, Write single statements.
	Read  RowQueryer
	Write Execer
	// InTx runs f in one transaction, named what in its errors, and
	// returns ErrConflict and ErrNotFound from f as they are.
	InTx func(ctx context.Context, what string, f func(Tx) error) error
	// MapErr is the backend's own error mapping (SQLite: a full disk is
	// ErrDiskFull); nil is none.
	MapErr func(error) error
	// IsUnique reports a unique-key violation.
	IsUnique func(error) bool
}

// NewSQL returns the shared statements over b.
func NewSQL(b SQLBackend) *SQL {
	s := &SQL{read: b.Read, write: b.Write, inTx: b.InTx, mapErr: b.MapErr, isUnique: b.IsUnique}
	if s.mapErr == nil {
		s.mapErr = func(err error) error { return err }
	}
	return s
}
