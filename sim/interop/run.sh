#!/usr/bin/env bash
# Interop test: clients nobody here wrote against `tiersim serve`.
#
# Creates a virtual environment with Chutes' published E2EE client
# (chutes-e2ee, pinned with pqcrypto) and the official openai client, builds
# tiersim in release, serves scenarios/interop_near_primary_chutes_fallback.toml
# on loopback, runs sim/interop/interop.py against it, then stops the server
# with SIGINT (Ctrl-C) and checks it stopped cleanly. Exits non-zero on any
# failure.
#
#   bash sim/interop/run.sh     (PORT_BASE=N: fixed ports; INTEROP_VENV: venv location)
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT_BASE=${PORT_BASE:-0}  # 0: OS-assigned ports, read back from the log
VENV=${INTEROP_VENV:-target/interop-venv}
SCENARIO=scenarios/interop_near_primary_chutes_fallback.toml
PYTHON=${PYTHON:-python3}

echo "== interop: python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 keeps venv (ensurepip) in a separate package.
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r sim/interop/requirements.txt

echo "== interop: build tiersim (release)"
cargo build --release -p tiersim --quiet

LOG=$(mktemp)
echo "== interop: tiersim serve $SCENARIO --port-base $PORT_BASE"
target/release/tiersim serve "$SCENARIO" --port-base "$PORT_BASE" >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -f "$LOG" "$LOG.client"
}
trap cleanup EXIT

# Wait until the endpoints are printed and the scenario's script (the fault
# the router calls rely on) has been played.
for _ in $(seq 1 300); do
    grep -q '^script done' "$LOG" && break
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "tiersim serve exited early:"
        cat "$LOG"
        exit 1
    fi
    sleep 0.1
done
if ! grep -q '^script done' "$LOG"; then
    echo "tiersim serve did not get ready in 30 s:"
    cat "$LOG"
    exit 1
fi
url() { awk -v h="$1" '$1 == h && $2 ~ /^http:/ { print $2; exit }' "$LOG"; }
ROUTER_URL=$(url router)
CHUTES_URL=$(url chutes)
echo "router $ROUTER_URL, chutes $CHUTES_URL"

status=0
ROUTER_URL=$ROUTER_URL CHUTES_URL=$CHUTES_URL "$VENV/bin/python" sim/interop/interop.py \
    >"$LOG.client" 2>&1 || status=$?

# Ctrl-C must stop the server cleanly.
kill -INT "$SERVER"
server_status=0
wait "$SERVER" || server_status=$?
echo "-- tiersim serve log"
cat "$LOG"
echo "-- interop client"
cat "$LOG.client"
rm -f "$LOG.client"
if [ "$server_status" != 0 ] || ! grep -q '^stopped$' "$LOG"; then
    echo "FAIL tiersim serve did not stop cleanly on SIGINT (exit $server_status)"
    exit 1
fi
exit "$status"
