// Package profiles stores ingested pprof profiles (blobs on disk, an SQLite
// index) and answers queries over them: types, labels, series, merges.
package profiles
