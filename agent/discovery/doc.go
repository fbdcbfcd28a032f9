// Package discovery finds the targets to profile (Kubernetes containers,
// systemd units, host processes) and tells which target a sampled pid is in.
package discovery
