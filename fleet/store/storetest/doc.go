// Package storetest is the one behaviour suite every fleet store passes
// (SQLite and PostgreSQL), plus valid-by-default fixtures.
package storetest
