// Package store defines the fleet's records (projects, tokens, agents,
// audit), the Store interface that SQLite and PostgreSQL implement, and
// the batched SQL writes both backends share (sql.go).
package store
