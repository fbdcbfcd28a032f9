// Package pb holds the generated protobuf and connect stubs (subpackages)
// for the Parca and Pyroscope write APIs; regenerate with `make generate`.
package pb
