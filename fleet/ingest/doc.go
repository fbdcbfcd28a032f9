// Package ingest receives profiles over Parca WriteRaw, Pyroscope push
// (gRPC, Connect) and POST /ingest, checks token, limits and data, and stores them.
package ingest
