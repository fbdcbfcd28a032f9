// Package client is the Go client of the fleet's JSON API, used by the
// admin CLI and tests; it never touches the database.
package client
