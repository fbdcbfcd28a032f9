// Package pg starts a real PostgreSQL server for tests: initdb and pg_ctl
// into a temporary directory, on a free loopback port.
package pg
