#!/usr/bin/env bash
# Builds in release mode and runs every benchmark of the README's "Performance" section
# (examples/bench/), printing one table of figures on stdout and progress on stderr.
#
#   scripts/bench.sh                  full sizes (about 10 minutes on 2 cores)
#   BENCH_QUICK=1 scripts/bench.sh    10x smaller sizes (about a minute)
#   scripts/bench.sh --only 1,3       some of them; --work DIR for the scratch folder
#
# Everything runs on loopback against the in-process sandbox gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin codeformer-ledger --example bench
exec target/release/examples/bench --exe target/release/codeformer-ledger "$@"
