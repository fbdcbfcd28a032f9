// Package profile builds one gzipped pprof CPU profile per target per
// sampler window, with symbolized kernel and user frames and target labels.
package profile
