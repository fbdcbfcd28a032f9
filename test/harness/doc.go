// Package harness starts real parts for tests: etcd with a kube-apiserver,
// and systemd as PID 1 of its own namespaces.
package harness
