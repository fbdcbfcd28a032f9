// Package fleettest starts the real fleetprof binaries for end-to-end
// tests: a fleet server on loopback, agents, and the admin CLI.
package fleettest
