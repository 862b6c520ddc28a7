#!/usr/bin/env bash
# bench/terminal.sh - the terminal WebSocket, cloudterm beside ttyd in the same run, with the
# same client (cloudterm-bench terminal, which speaks both protocols):
#   connect → first prompt of a new shell (p50, p99);
#   keystroke → echo round trip at a bash prompt (p50, p99);
#   output flood, `yes | head -c 50M` at the prompt (MB/s to one decimal, the median of FLOODS;
#   the program output delivered as output in the last flood, and the repaints sent instead of
#   output a viewer missed).
#
# Usage: bench/terminal.sh [RUNTIME] [TTYD]   (RUNTIME linux|process, default linux; TTYD the
#   ttyd binary, default $TTYD or `ttyd` on PATH; BENCHMARKS.md says how to build it)
# Env: CONNECTS (50), KEYS (2000), FLOOD_MB (50), FLOODS (3).
# Needs: root for the linux runtime, release builds:
#   cargo build --release -p cloudterm -p cloudterm-agent -p cloudterm-runtime-linux -p cloudterm-bench
set -euo pipefail
RUNTIME=${1:-linux}
TTYD=${2:-${TTYD:-ttyd}}
CONNECTS=${CONNECTS:-50}
KEYS=${KEYS:-2000}
FLOOD_MB=${FLOOD_MB:-50}
FLOODS=${FLOODS:-3}
BIN=${BIN:-target/release}
DATA=$(mktemp -d)
chmod 711 "$DATA"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TTYD_PORT=$(free_port)
SERVER=
PEER=
cleanup() {
  [ -n "$PEER" ] && kill "$PEER" 2>/dev/null && wait "$PEER" 2>/dev/null
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT

CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=$RUNTIME "$BIN/cloudterm" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
# ttyd as its README runs it, writable, on loopback, the same login shell.
"$TTYD" --port "$TTYD_PORT" --interface lo --writable --debug 1 bash -l 2>/dev/null &
PEER=$!
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.05; done
until curl -fs "http://127.0.0.1:$TTYD_PORT/" >/dev/null; do sleep 0.05; done
export CLOUDTERM_URL="http://127.0.0.1:$PORT"
export CLOUDTERM_TOKEN=$("$BIN/cloudterm" token bench --data-dir "$DATA")

echo "runtime: $RUNTIME, ttyd $("$TTYD" --version | awk '{print $NF}'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| server | connect → prompt p50 | p99 | echo p50 | echo p99 | flood ${FLOOD_MB} MiB, median (min–max) | delivered as output (last flood) |"
echo "|---|---|---|---|---|---|---|"
ARGS=(--connects "$CONNECTS" --keys "$KEYS" --flood-mb "$FLOOD_MB" --floods "$FLOODS")
"$BIN/cloudterm-bench" terminal --protocol cloudterm "${ARGS[@]}" --label "cloudterm ($RUNTIME runtime)"
"$BIN/cloudterm-bench" terminal --protocol ttyd --ws-url "ws://127.0.0.1:$TTYD_PORT/ws" "${ARGS[@]}" --label "ttyd (host bash)"
