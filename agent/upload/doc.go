// Package upload sends the agent's profiles to a Parca (WriteRaw, gRPC) or
// Pyroscope (push, Connect) backend through a bounded, optionally spooled queue.
package upload
