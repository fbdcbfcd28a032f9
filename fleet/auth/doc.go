// Package auth decides who a bearer token is: it verifies fleetprof JWTs,
// consults revocations and projects, and issues tokens with their records.
package auth
