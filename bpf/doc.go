// Package bpf holds the eBPF CPU sampler (profile.c) and the Go bindings
// that bpf2go generates from it; only agent/sampler imports this package.
package bpf
