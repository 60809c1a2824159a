#!/usr/bin/env bash
# Polls per job with and without webhook callbacks (issue 6), on loopback. Bounded: JOBS jobs
# (default 100), each run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet --example bench_callbacks -- "${JOBS:-100}"
