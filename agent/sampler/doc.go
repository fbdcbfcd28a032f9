// Package sampler samples the stacks of every CPU with an eBPF perf_event
// program and hands over the counts of each window (default 19 Hz, 10 s).
package sampler
