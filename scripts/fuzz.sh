#!/usr/bin/env bash
# Longer fuzzing of every parser that reads outside input (gateway answers, webhook bodies,
# image headers, manifests, command-line values). Bounded: FUZZ_CASES cases per property
# (default 20000) and FUZZ_SECONDS of wall time (default 600). A failure is saved under
# tests/proptest-regressions/fuzz.txt and replayed by `cargo test` from then on: commit that file.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${FUZZ_CASES:-20000}
seconds=${FUZZ_SECONDS:-600}
echo "fuzzing with $cases cases per property, at most ${seconds}s"
PROPTEST_CASES=$cases timeout "$seconds" cargo test --release --test integration fuzz:: -- --nocapture
