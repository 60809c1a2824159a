#!/usr/bin/env bash
# Builds in release mode and runs every benchmark of the README's "Performance" section
# (examples/bench/), printing one table of figures on stdout and progress on stderr, then the
# uploads benchmark (examples/bench_uploads.rs: photos of 1-5 MB into a loopback S3 server, one
# upload at a time and at the default concurrency).
#
#   scripts/bench.sh                  full sizes (about 10 minutes on 2 cores; 200 photos)
#   BENCH_QUICK=1 scripts/bench.sh    10x smaller sizes (about a minute; 20 photos)
#   scripts/bench.sh --only 1,3       some of them (no uploads); --work DIR for the scratch folder
#   UPLOAD_FILES=1000 scripts/bench.sh   the uploads benchmark with 1,000 photos (about 3 GB in
#                                        the temporary folder, and as much again for the bucket)
#
# Everything runs on loopback against the in-process sandbox gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin codeformer-ledger --example bench --example bench_uploads
target/release/examples/bench --exe target/release/codeformer-ledger "$@"
case " $* " in
*" --only "*) exit 0 ;;
esac
if [ -n "${BENCH_QUICK:-}" ]; then files=${UPLOAD_FILES:-20}; else files=${UPLOAD_FILES:-200}; fi
target/release/examples/bench_uploads target/release/codeformer-ledger \
    "$files" "${UPLOAD_MIN_MB:-1}" "${UPLOAD_MAX_MB:-5}" "${UPLOAD_CONCURRENCY:-1,4}"
