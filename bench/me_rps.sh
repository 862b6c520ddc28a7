#!/usr/bin/env bash
# bench/me_rps.sh - requests per second of an authenticated GET /me, beside GET /health
# (the same server, no auth, no store) as the peer baseline, in one run.
#
# Usage: bench/me_rps.sh [DURATION_SECONDS] [CONNECTIONS]
# Needs: wrk (apt-get install wrk), a release build (cargo build --release -p cloudterm).
set -euo pipefail
DURATION=${1:-10}
CONNECTIONS=${2:-64}
BIN=${CLOUDTERM_BIN:-target/release/cloudterm}
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA"' EXIT

start=$(date +%s%N)
CLOUDTERM_LOG=warn "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.01; done
echo "start-up to first /health: $(( ($(date +%s%N) - start) / 1000000 )) ms"

TOKEN=$("$BIN" token bench --data-dir "$DATA")
curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/me" >/dev/null

run() {
  local name=$1; shift
  local out
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@")
  printf '%-22s %s req/s   p50 %s   p99 %s\n' "$name" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")"
}
run "GET /health (peer)" "http://127.0.0.1:$PORT/health"
run "GET /me (JWT+store)" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/me"
