#!/usr/bin/env bash
# bench/preview.sh - preview proxy throughput and latency with wrk: the same app inside a
# sandbox, hit through /preview/{sandbox}/{port}/ and directly inside the sandbox's network
# (wrk in the sandbox's network namespace via nsenter on the linux runtime; 127.0.0.1 on the
# process runtime). The app is the tests' standard-library Python server
# (crates/cloudterm-server/tests/it/fixtures/preview_app.py, HTTP/1.1 keep-alive).
#
# Usage: bench/preview.sh [RUNTIME] [DURATION] [CONNECTIONS]   (RUNTIME linux|process, default linux)
# Needs: wrk (apt-get install wrk), python3, curl, root for the linux runtime, release builds:
#   cargo build --release -p cloudterm -p cloudterm-agent -p cloudterm-runtime-linux
set -euo pipefail
RUNTIME=${1:-linux}
DURATION=${2:-10s}
CONNS=${3:-16}
BIN=target/release
APP=crates/cloudterm-server/tests/it/fixtures/preview_app.py
DATA=$(mktemp -d)
chmod 711 "$DATA"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
SBX=
cleanup() {
  # Sandboxes outlive their server on purpose: delete ours first.
  [ -n "$SBX" ] && curl -fs -X DELETE -H "Authorization: Bearer $TOKEN" "$URL/sandboxes/$SBX" >/dev/null || true
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA"
}
trap cleanup EXIT

CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=$RUNTIME CLOUDTERM_WARM_POOL=0 \
  "$BIN/cloudterm" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.05; done
URL="http://127.0.0.1:$PORT"
TOKEN=$("$BIN/cloudterm" token bench --data-dir "$DATA")
api() { curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }

SBX=$(api -X POST -d '{}' "$URL/sandboxes" | json '["id"]')
api -X PUT --data-binary "@$APP" "$URL/sandboxes/$SBX/files/preview_app.py" >/dev/null
APP_PORT=$([ "$RUNTIME" = process ] && free_port || echo 8080)
api -X POST -d "{\"argv\": [\"python3\", \"preview_app.py\", \"$APP_PORT\", \"bench\"]}" \
  "$URL/sandboxes/$SBX/background" >/dev/null
probe="python3 -c \\\"import socket; socket.create_connection(('127.0.0.1', $APP_PORT), 1)\\\" && echo up"
until api -X POST -d "{\"command\": \"$probe\"}" "$URL/sandboxes/$SBX/exec" | grep -q '"up\\n"'; do sleep 0.2; done
api -X POST -d "{\"sandbox_id\": \"$SBX\", \"port\": $APP_PORT}" "$URL/preview/register" >/dev/null

if [ "$RUNTIME" = linux ]; then
  PID=$(grep -l "$SBX" /proc/[0-9]*/cgroup 2>/dev/null | head -1 | cut -d/ -f3)
  DIRECT=(nsenter -t "$PID" -n)
else
  DIRECT=()
fi

echo "runtime: $RUNTIME, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), wrk -t2 -c$CONNS -d$DURATION"
for path in whoami "big?mb=1"; do
  echo
  echo "== direct, inside the sandbox's network: GET /$path"
  "${DIRECT[@]}" wrk -t2 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$APP_PORT/$path"
  echo
  echo "== through the preview (owner's bearer token): GET /preview/$SBX/$APP_PORT/$path"
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "$URL/preview/$SBX/$APP_PORT/$path"
done
