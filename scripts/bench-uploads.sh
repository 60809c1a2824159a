#!/usr/bin/env bash
# Uploads of local photos through an S3-compatible bucket: `batch DIR --upload` by the release
# binary against an in-process S3 server and a fast sandbox, on loopback. UPLOAD_FILES photos
# (default 50, at most 1000) of UPLOAD_MIN_MB-UPLOAD_MAX_MB MB (default 1-5), once per
# concurrency of UPLOAD_CONCURRENCY (default "1,4": one upload at a time, then the default
# concurrency). Prints uploads per second and the command's CPU time per MB for each.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin codeformer-ledger --example bench_uploads
target/release/examples/bench_uploads target/release/codeformer-ledger \
    "${UPLOAD_FILES:-50}" "${UPLOAD_MIN_MB:-1}" "${UPLOAD_MAX_MB:-5}" "${UPLOAD_CONCURRENCY:-1,4}"
