#!/usr/bin/env bash
# `listen` held busy by idle and slow connections, on loopback: the release binary with its
# default options, LISTEN_IDLE held connections (default 1000), LISTEN_CALLBACKS callbacks
# (default 100) sent while they are open. Prints the callbacks' latency (min/median/max), the
# 503s beyond the cap, and the held connections the server closed after its header timeout.
# Bounded: about 10 s. Needs an open-file limit above LISTEN_IDLE + 164 (the bench raises its
# soft limit to the hard one).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin codeformer-ledger --example bench_listen
target/release/examples/bench_listen target/release/codeformer-ledger \
    "${LISTEN_IDLE:-1000}" "${LISTEN_CALLBACKS:-100}"
