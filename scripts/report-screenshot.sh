#!/usr/bin/env bash
# Screenshots of the HTML cost report, to look at how it reads in a real browser.
#
# Builds ledgers from real runs against the `sandbox` command on loopback (batches on several
# pinned days, tags, a price change, some FAILED jobs), renders `report --format html` and
# takes a 1200 px wide screenshot of each page with headless Chromium:
#   day.png, batch.png, tag-client.png   one ledger: 7 batches over 5 days, one with a
#                                        60-character name, clients by tag, one 60 characters;
#                                        two batches run with --budget (drawn on batch.png
#                                        when the ledger remembers a batch's budget)
#   month.png                            the same ledger --by month
#   many-batches.png                     30 batches
#   one-batch.png                        a single batch (and a single day)
# The .html pages are kept beside the .png files.
#
#   scripts/report-screenshot.sh [OUT_DIR]      (default: a new temporary folder)
#
# Needs bash, cargo and Chromium; it installs nothing. Not part of `cargo test`.
# REPORT_BIN=path/to/codeformer-ledger skips the build; REPORT_HEIGHT=2400 takes taller
# screenshots (default 900 px, one screen); REPORT_KEEP=1 keeps the ledgers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HEIGHT=${REPORT_HEIGHT:-900}

BROWSER=
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        BROWSER=$(command -v "$candidate")
        break
    fi
done
if [ -z "$BROWSER" ]; then
    cat >&2 <<'EOF'
Chromium is not installed; this script needs it to take the screenshots.
On Debian or Ubuntu:  sudo apt-get update && sudo apt-get install -y chromium
(or put a chromium, chromium-browser or google-chrome binary on PATH), then run it again.
EOF
    exit 1
fi

OUT=${1:-$(mktemp -d "${TMPDIR:-/tmp}/codeformer-report.XXXXXX")}

if [ -n "${REPORT_BIN:-}" ]; then
    BIN=$REPORT_BIN
else
    echo "building..." >&2
    cargo build --quiet --manifest-path "$ROOT/Cargo.toml"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/codeformer-ledger"
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/codeformer-report-work.XXXXXX")
SANDBOX_PID=
cleanup() {
    if [ -n "$SANDBOX_PID" ]; then
        kill "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
    fi
    if [ "${REPORT_KEEP:-0}" = 1 ]; then
        echo "kept the ledgers in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

"$BIN" sandbox --addr 127.0.0.1:0 --static-dir "$ROOT/examples/images" --fast \
    --queue-ms 10 --processing-ms 20-80 --fail-rate 0.15 --seed 11 \
    >"$WORK/sandbox.out" 2>"$WORK/sandbox.err" &
SANDBOX_PID=$!
for _ in $(seq 100); do
    grep -q '^SANDBOX_STATIC_URL=' "$WORK/sandbox.out" 2>/dev/null && break
    sleep 0.1
done
STATIC_URL=$(sed -n 's/^SANDBOX_STATIC_URL=//p' "$WORK/sandbox.out")
if [ -z "$STATIC_URL" ]; then
    echo "the sandbox did not start:" >&2
    cat "$WORK/sandbox.err" >&2
    exit 1
fi
export PIXAZO_BASE_URL
PIXAZO_BASE_URL=$(sed -n 's/^PIXAZO_BASE_URL=//p' "$WORK/sandbox.out")
unset PIXAZO_API_KEY CODEFORMER_LEDGER CODEFORMER_LEDGER_NOW
export CODEFORMER_LEDGER_CONFIG="$WORK/no-config.toml"
touch "$CODEFORMER_LEDGER_CONFIG"

IMAGES=(portrait-small.png couple-landscape.jpg avatar.png tall-333x517.jpg grayscale-ish.webp)

# batch LEDGER DAY NAME CLIENT JOBS [BUDGET]: a batch of JOBS images tagged client=CLIENT, run
# to the end on DAY (the clock pinned to 10:00 UTC that day), with --budget BUDGET if given.
batch() {
    local ledger=$1 day=$2 name=$3 client=$4 jobs=$5 manifest="$WORK/manifest.csv" i
    local budget=()
    [ -n "${6:-}" ] && budget=(--budget "$6")
    echo "image,upscale,key,tags" >"$manifest"
    for i in $(seq 0 $((jobs - 1))); do
        printf '%s%s,%d,%s,"client=%s"\n' "$STATIC_URL" "${IMAGES[$((i % 5))]}" \
            $((2 + i % 3)) "$name-$i" "$client" >>"$manifest"
    done
    local code=0
    CODEFORMER_LEDGER_NOW="${day}T10:00:00Z" "$BIN" --ledger "$ledger" batch "$manifest" \
        --name "$name" --out-dir "$WORK/out" --poll-interval 50ms --quiet "${budget[@]}" \
        >>"$WORK/runs.log" 2>&1 || code=$?
    # 3: some jobs FAILED, as the sandbox was asked to make some.
    if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then
        echo "batch $name exited $code; the log:" >&2
        cat "$WORK/runs.log" >&2
        exit 1
    fi
}

shoot() {
    local ledger=$1 by=$2 name=$3
    "$BIN" --ledger "$ledger" report --by "$by" --format html --output "$OUT/$name.html"
    "$BROWSER" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$WORK/browser" --window-size="1200,$HEIGHT" \
        --screenshot="$OUT/$name.png" "file://$OUT/$name.html" >>"$WORK/browser.log" 2>&1 || {
        echo "the browser failed on $name.html:" >&2
        cat "$WORK/browser.log" >&2
        exit 1
    }
    echo "$OUT/$name.png" >&2
}

echo "running batches against the sandbox..." >&2
MAIN="$WORK/main.db"
LONG_CLIENT="Northwind Traders and Partners, Restoration Service Division"
batch "$MAIN" 2026-11-02 wedding-smith acme 6
batch "$MAIN" 2026-11-02 passport-renewals globex 3
batch "$MAIN" 2026-11-04 family-archive-1998 acme 8 0.01
CODEFORMER_LEDGER_NOW=2026-11-04T12:00:00Z "$BIN" --ledger "$MAIN" prices set 0.0025 \
    --from 2026-11-05 --note "new rate" >>"$WORK/runs.log" 2>&1
batch "$MAIN" 2026-11-05 scanned-negatives-box-3-of-12-from-the-attic-at-grandmas-hou \
    "$LONG_CLIENT" 10
batch "$MAIN" 2026-11-07 school-portraits initech 12 0.02
batch "$MAIN" 2026-11-09 museum-loan globex 4
batch "$MAIN" 2026-11-09 reprints acme 2
shoot "$MAIN" day day
shoot "$MAIN" batch batch
shoot "$MAIN" tag:client tag-client
shoot "$MAIN" month month

MANY="$WORK/many.db"
for i in $(seq 1 30); do
    batch "$MANY" "2026-11-$(printf '%02d' $(((i - 1) % 28 + 1)))" "$(printf 'shoot-%02d' "$i")" \
        "client-$((i % 7))" $((1 + i % 4))
done
shoot "$MANY" batch many-batches

ONE="$WORK/one.db"
batch "$ONE" 2026-11-20 only-batch acme 3
shoot "$ONE" batch one-batch

echo "screenshots and pages in $OUT" >&2
