// Package e2e holds end-to-end tests that run the real fleetprof binaries
// on loopback: enrollment, credentials, revocation, restarts.
package e2e
