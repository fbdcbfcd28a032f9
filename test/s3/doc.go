// Package s3 starts a real S3-compatible server for tests: versitygw (the
// Versity S3 Gateway) with a POSIX backend in a temp dir, on a free port.
package s3
