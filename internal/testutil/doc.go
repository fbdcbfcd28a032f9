// Package testutil holds helpers for tests that need real kernel features:
// RequireBPF gates privileged tests and MainFDLeakCheck fails leaky packages.
package testutil
