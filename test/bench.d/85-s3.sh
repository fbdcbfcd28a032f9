#!/usr/bin/env bash
# Profile store ingest rate and merge time with blobs in a local directory
# vs a bucket of a real S3 server (versitygw from test/setup.d/50-s3.sh) in
# the same run. Prints one markdown section.
set -euo pipefail
cd "$(dirname "$0")/../.."
go run ./test/s3/s3bench -profiles 3000 -clients 16
