// Package store defines the fleet's records (projects, tokens, agents,
// audit), the Store interface that SQLite and PostgreSQL implement, and
// what both backends share: the agent record's codec (codec.go) and the
// statements they have in common (sql.go).
package store
