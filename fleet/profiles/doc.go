// Package profiles stores ingested pprof profiles (blobs in a directory or
// an S3 bucket, an SQLite index) and answers queries over them.
package profiles
