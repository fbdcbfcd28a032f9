// Package store defines the fleet's records (projects, tokens, agents,
// audit) and the Store interface that SQLite and PostgreSQL implement.
package store
