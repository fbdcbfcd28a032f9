// Package server wires the fleet's parts (store, auth, OpAMP, API, ingest,
// console) onto one HTTP address and runs them until cancelled.
package server
