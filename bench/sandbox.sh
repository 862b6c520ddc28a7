#!/usr/bin/env bash
# bench/sandbox.sh - sandbox benchmarks, each beside its peer in the same run:
#   create → first exec (p50, p99) against bare `unshare` and `bwrap`;
#   exec round trip of `true` over HTTP;
#   pause, resume and the first exec on a paused sandbox (linux) against a bare cgroup freezer;
#   host memory per idle sandbox with COUNT running.
#
# Usage: bench/sandbox.sh [RUNTIME] [N] [COUNT]   (RUNTIME linux|process, default linux)
# Needs: root for the linux runtime, bwrap (apt-get install bubblewrap), release builds:
#   cargo build --release -p cloudterm -p cloudterm-agent -p cloudterm-runtime-linux -p cloudterm-bench
set -euo pipefail
RUNTIME=${1:-linux}
N=${2:-50}
COUNT=${3:-200}
BIN=target/release
DATA=$(mktemp -d)
chmod 711 "$DATA"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA"' EXIT

CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=$RUNTIME CLOUDTERM_QUOTA_MAX_SANDBOXES=$((COUNT + 10)) \
  CLOUDTERM_SANDBOX_MEMORY_MB=256 "$BIN/cloudterm" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.05; done
export CLOUDTERM_URL="http://127.0.0.1:$PORT"
export CLOUDTERM_TOKEN=$("$BIN/cloudterm" token bench --data-dir "$DATA")

echo "runtime: $RUNTIME, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 1 # let the warm pool fill
"$BIN/cloudterm-bench" create --n "$N" --pace-ms 100 --label "cloudterm sandbox, one create every 100 ms (warm pool)"
"$BIN/cloudterm-bench" create --n "$N" --no-peers --label "cloudterm sandbox, back to back (each deleted before the next create)"
echo
"$BIN/cloudterm-bench" exec-rtt --n 2000
echo
if [ "$RUNTIME" = linux ]; then
  "$BIN/cloudterm-bench" pause --n 200
  echo
fi
"$BIN/cloudterm-bench" idle-memory --count "$COUNT" --server-pid "$SERVER"
