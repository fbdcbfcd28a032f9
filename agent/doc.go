// Package agent wires the host agent together: control connection, eBPF
// sampler, discovery, profile building and upload, with health endpoints.
package agent
