// Package console serves the fleet's JSON API (and, in time, the web UI):
// projects, tokens, agents and audit, each call checked against its caller.
package console
