// Package sqlite implements store.Store on an embedded SQLite database
// (modernc.org/sqlite, no cgo) with versioned migrations.
package sqlite
