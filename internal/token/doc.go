// Package token issues and verifies fleetprof's Ed25519-signed JWTs
// (project API, bootstrap, agent credential and admin tokens) and its JWKS.
package token
