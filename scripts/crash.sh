#!/usr/bin/env bash
# The long crash test: a batch of CRASH_JOBS images against the `sandbox` command running in
# its own process, the release binary killed with SIGKILL CRASH_KILLS times at random moments,
# then resumed (and what the kills left uncertain resent) until done. Every round starts two
# engines at the same instant, one through a symbolic link to the ledger and one through a hard
# link: one engine per ledger file, so one of them exits 5. At the end the ledger is audited
# against the sandbox's own counts (GET /sandbox/stats):
#   - every job completed, no post-processing owed;
#   - per image, the sandbox received the attempts the ledger knows by request id, plus at
#     most one for each attempt the ledger holds as uncertain;
#   - every charge in the ledger equals the sandbox's for that request id; the sandbox's
#     total is the ledger's plus exactly the jobs behind uncertain attempts;
#   - every output file is whole (bytes, sha256, PNG size) and no .partial file is left.
# It prints a summary and exits non-zero when a check fails.
#
# With CRASH_CALLBACKS=1 the batch uses webhook callbacks to a `listen` beside the engines
# (each attempt on its own callback path), and no run resends uncertain attempts until the
# sandbox has finished every job it accepted and delivered its callbacks: every attempt whose
# ghost called back is adopted, so the check is stricter: the sandbox bills no image twice
# (no charge the ledger does not know by request id).
#
# Bounded: at most CRASH_KILLS kills and CRASH_LIMIT_S seconds of killing (default 500 jobs,
# 30 kills, 240 s; the whole script stops within ~5 minutes once built).
#
#   scripts/crash.sh
#   CRASH_JOBS=2000 CRASH_KILLS=100 CRASH_SEED=7 CRASH_KEEP=1 scripts/crash.sh
#   CRASH_CALLBACKS=1 scripts/crash.sh      (default there: 200 jobs, 15 kills, 120 s)
#
# Needs bash, cargo and python3 (standard library only). Loopback only.
set -euo pipefail

CALLBACKS=${CRASH_CALLBACKS:-0}
if [ "$CALLBACKS" = 1 ]; then
    JOBS=${CRASH_JOBS:-200}
    KILLS=${CRASH_KILLS:-15}
    LIMIT_S=${CRASH_LIMIT_S:-120}
else
    JOBS=${CRASH_JOBS:-500}
    KILLS=${CRASH_KILLS:-30}
    LIMIT_S=${CRASH_LIMIT_S:-240}
fi
SEED=${CRASH_SEED:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

echo "building the release binary..." >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/codeformer-ledger"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/codeformer-crash.XXXXXX")
SANDBOX_PID=
LISTEN_PID=
cleanup() {
    if [ -n "$LISTEN_PID" ]; then
        kill "$LISTEN_PID" 2>/dev/null || true
        wait "$LISTEN_PID" 2>/dev/null || true
    fi
    if [ -n "$SANDBOX_PID" ]; then
        kill "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
    fi
    if [ "${CRASH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Inputs of distinct sizes (8+i x 8), so that a charge names its image.
mkdir -p "$WORK/static" "$WORK/out"
python3 - "$WORK/static" "$JOBS" <<'PY'
import struct, sys, zlib
folder, count = sys.argv[1], int(sys.argv[2])
def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
for i in range(count):
    w, h = 8 + i, 8
    rows = b"".join(b"\0" + bytes((x * 7 + y * 13) % 256 for x in range(w)) for y in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with open(f"{folder}/p{i:05}.png", "wb") as f:
        f.write(png)
PY

SANDBOX_EXTRA=()
[ "$CALLBACKS" = 1 ] && SANDBOX_EXTRA=(--allow-http-webhooks)
"$BIN" sandbox --addr 127.0.0.1:0 --static-dir "$WORK/static" --fast --queue-ms 20 \
    --processing-ms 100-400 --latency-ms 80 --seed "$SEED" "${SANDBOX_EXTRA[@]}" \
    >"$WORK/sandbox.out" 2>"$WORK/sandbox.err" &
SANDBOX_PID=$!
for _ in $(seq 100); do
    grep -q '^SANDBOX_STATIC_URL=' "$WORK/sandbox.out" 2>/dev/null && break
    sleep 0.1
done
BASE_URL=$(sed -n 's/^PIXAZO_BASE_URL=//p' "$WORK/sandbox.out")
STATIC_URL=$(sed -n 's/^SANDBOX_STATIC_URL=//p' "$WORK/sandbox.out")
if [ -z "$STATIC_URL" ]; then
    echo "the sandbox did not start:" >&2
    cat "$WORK/sandbox.err" >&2
    exit 1
fi
export PIXAZO_BASE_URL="$BASE_URL"
export CODEFORMER_LEDGER="$WORK/ledger.db"
unset PIXAZO_API_KEY

for i in $(seq 0 $((JOBS - 1))); do
    printf '%sp%05d.png\n' "$STATIC_URL" "$i"
done >"$WORK/crash.txt"
BATCH_EXTRA=()
if [ "$CALLBACKS" = 1 ]; then
    TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    CODEFORMER_LISTEN_TOKEN="$TOKEN" "$BIN" listen --addr 127.0.0.1:0 \
        >"$WORK/listen.out" 2>"$WORK/listen.err" &
    LISTEN_PID=$!
    for _ in $(seq 100); do
        grep -q '^LISTEN_ADDR=' "$WORK/listen.out" 2>/dev/null && break
        sleep 0.1
    done
    LISTEN_ADDR=$(sed -n 's/^LISTEN_ADDR=//p' "$WORK/listen.out")
    if [ -z "$LISTEN_ADDR" ]; then
        echo "listen did not start:" >&2
        cat "$WORK/listen.err" >&2
        exit 1
    fi
    BATCH_EXTRA=(--webhook-url "http://$LISTEN_ADDR/callback/$TOKEN")
fi
"$BIN" batch "$WORK/crash.txt" --name crash --enqueue-only "${BATCH_EXTRA[@]}" >/dev/null

ln -s "$WORK/ledger.db" "$WORK/symlink.db"
ln "$WORK/ledger.db" "$WORK/hardlink.db"

RUN=(run --batch crash --quiet --poll-interval 100ms --concurrency 4 --out-dir "$WORK/out")
[ "$CALLBACKS" = 1 ] && RUN+=(--callback-fallback 2s)
run() {
    timeout 300 "$BIN" "${RUN[@]}" "$@" >>"$WORK/runs.log" 2>&1
}

RANDOM=$SEED
START=$SECONDS
kills=0
refused=0
rounds=0
echo "$JOBS jobs; killing the engine up to $KILLS times..." >&2
while [ "$kills" -lt "$KILLS" ] && [ $((SECONDS - START)) -lt "$LIMIT_S" ]; do
    rounds=$((rounds + 1))
    extra=()
    # Every third run also resends what earlier kills left uncertain (not with callbacks:
    # there a ghost's callback adopts its attempt, and resending could pay twice).
    [ $((rounds % 3)) -eq 0 ] && [ "$CALLBACKS" != 1 ] && extra=(--resubmit-uncertain)
    CODEFORMER_LEDGER="$WORK/symlink.db" "$BIN" "${RUN[@]}" "${extra[@]}" >>"$WORK/runs.log" 2>&1 &
    pid=$!
    CODEFORMER_LEDGER="$WORK/hardlink.db" "$BIN" "${RUN[@]}" "${extra[@]}" >>"$WORK/runs.log" 2>&1 &
    twin=$!
    sleep "$(printf '0.%03d' $((RANDOM % 900 + 100)))"
    done_code=
    for p in "$pid" "$twin"; do
        # An engine that already exited keeps its own code; a killed one reports 137.
        kill -9 "$p" 2>/dev/null || true
        code=0
        wait "$p" 2>/dev/null || code=$?
        case "$code" in
            0) done_code=0 ;;
            5) refused=$((refused + 1)) ;;
            137) kills=$((kills + 1)) ;;
        esac
    done
    [ "$done_code" = 0 ] && break
done
if [ "$CALLBACKS" = 1 ]; then
    # Every job the sandbox accepted finishes there and calls back before anything is resent:
    # what is still uncertain then has no ghost.
    python3 - "$BASE_URL" <<'PY'
import json, sys, time, urllib.request
for _ in range(600):
    with urllib.request.urlopen(sys.argv[1] + "/sandbox/stats", timeout=10) as answer:
        s = json.load(answer)
    ended = s["completed"] + s["failed"] + s["errored"]
    if ended == s["accepted"] and s["callbacks_sent"] + s["callbacks_failed"] >= ended:
        break
    time.sleep(0.1)
PY
    run || true
fi
finish_code=1
for _ in 1 2 3 4 5 6; do
    code=0
    run || code=$?
    if [ "$code" -eq 0 ]; then
        finish_code=0
        break
    fi
    if [ "$code" -ne 3 ]; then
        echo "run exited $code; see $WORK/runs.log" >&2
        CRASH_KEEP=1
        exit 1
    fi
    run --resubmit-uncertain || true
done
if [ "$finish_code" -ne 0 ]; then
    echo "the batch never finished cleanly; see $WORK/runs.log" >&2
    CRASH_KEEP=1
    exit 1
fi

python3 - "$WORK" "$BASE_URL" "$kills" "$((SECONDS - START))" "$refused" "$rounds" "$CALLBACKS" <<'PY' || { CRASH_KEEP=1; exit 1; }
import hashlib, json, os, sqlite3, struct, sys, time, urllib.request
from decimal import Decimal
work, base, kills, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
refused, rounds, callbacks = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
problems = []
def check(ok, message):
    if not ok:
        problems.append(message)

def stats():
    with urllib.request.urlopen(base + "/sandbox/stats", timeout=10) as answer:
        return json.load(answer)
for _ in range(200):  # jobs whose answer was lost still finish at the gateway
    s = stats()
    if s["completed"] + s["failed"] + s["errored"] == s["accepted"]:
        break
    time.sleep(0.05)

db = sqlite3.connect(f"file:{work}/ledger.db?mode=ro", uri=True)
jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
left = db.execute("SELECT count(*) FROM jobs WHERE state != 'completed' OR post IS NOT NULL").fetchone()[0]
check(left == 0, f"{left} job(s) not completed")
attempts = db.execute(
    "SELECT j.image_url, a.state, a.request_id, a.estimated_cost, a.actual_cost"
    " FROM attempts a JOIN jobs j ON j.id = a.job_id").fetchall()
known, per_image, by_cost = {}, {}, {}
uncertain = 0
for image, state, rid, estimated, actual in attempts:
    k, u = per_image.get(image, (0, 0))
    if rid:
        known[rid] = (state, actual)
        k += 1
    if state == "uncertain":
        u += 1
        uncertain += 1
    per_image[image] = (k, u)
    if estimated:
        by_cost[Decimal(estimated)] = image
subs = s["submissions_by_image"]
for image, (k, u) in per_image.items():
    n = subs.get(image, 0)
    check(k <= n <= k + u, f"{image}: {n} submission(s), {k} known, {u} uncertain")
charges = {rid: Decimal(usd) for rid, usd in s["charges_by_request"].items()}
ledger = Decimal(0)
for rid, (state, actual) in known.items():
    check(actual is not None and Decimal(actual) == charges.get(rid),
          f"{rid}: ledger {actual}, sandbox {charges.get(rid)}")
    ledger += Decimal(actual or 0)
orphans, orphan_usd, orphan_by_image = 0, Decimal(0), {}
for rid, usd in charges.items():
    if rid in known:
        continue
    orphans += 1
    orphan_usd += usd
    image = by_cost.get(usd)
    check(image is not None, f"{rid}: charged {usd}, which no job costs")
    orphan_by_image[image] = orphan_by_image.get(image, 0) + 1
for image, n in orphan_by_image.items():
    k, u = per_image.get(image, (0, 0))
    check(n <= u, f"{image}: {n} unknown charge(s) for {u} uncertain attempt(s)")
if callbacks:
    check(orphans == 0, f"{orphans} charge(s) the ledger does not know: a ghost was not adopted")
sandbox = Decimal(s["charged_usd"])
check(sandbox == ledger + orphan_usd, f"sandbox {sandbox} != ledger {ledger} + uncertain {orphan_usd}")
twice = db.execute("SELECT count(*) FROM (SELECT 1 FROM events WHERE kind = 'charge'"
                   " GROUP BY job_id, attempt HAVING count(*) > 1)").fetchone()[0]
check(twice == 0, f"{twice} attempt(s) charged twice")
outputs = db.execute(
    "SELECT o.path, o.bytes, o.sha256, o.width, o.height, j.input_width * j.upscale, j.input_height * j.upscale"
    " FROM outputs o JOIN jobs j ON j.id = o.job_id AND j.attempt = o.attempt").fetchall()
check(len(outputs) == jobs, f"{len(outputs)} outputs for {jobs} jobs")
for path, size, sha, w, h, ew, eh in outputs:
    try:
        data = open(path, "rb").read()
    except OSError as e:
        check(False, f"{path}: {e}")
        continue
    check(len(data) == size and hashlib.sha256(data).hexdigest() == sha, f"{path} is not whole")
    check(struct.unpack(">II", data[16:24]) == (w, h) == (ew, eh), f"{path}: size")
partial = [n for n in os.listdir(f"{work}/out") if n.startswith(".partial-")]
check(not partial, f"temporary downloads left: {partial}")
caught = db.execute("SELECT count(*) FROM events WHERE kind = 'state' AND detail LIKE 'submitting -> uncertain%'").fetchone()[0]
resent = db.execute("SELECT count(*) FROM events WHERE kind = 'retry'").fetchone()[0]
adopted = db.execute("SELECT count(DISTINCT job_id) FROM deliveries WHERE outcome = 'adopted'").fetchone()[0]

print(f"jobs               {jobs} ({len(attempts)} attempts)")
print(f"kills              {kills} in {seconds}s ({rounds} rounds of two engines at once)")
print(f"second engines     {refused} exited 5 (the ledger was held through its other name)")
print(f"uncertain          {uncertain} attempt(s): {caught} caught mid-submission by a kill, {resent} resent")
if callbacks:
    print(f"adopted            {adopted} ghost submission(s) by their callback")
print(f"charged: ledger    {ledger} USD")
print(f"charged: sandbox   {sandbox} USD")
print(f"  of which unknown {orphan_usd} USD: {orphans} job(s) behind uncertain attempts (possible double charges)")
print(f"outputs            {len(outputs)} whole, {len(partial)} partial")
if problems:
    print(f"FAILED: {len(problems)} problem(s)")
    for p in problems[:50]:
        print("  " + p)
    sys.exit(1)
print("OK: the ledger matches the sandbox")
PY
