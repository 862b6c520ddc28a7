#!/usr/bin/env bash
# bench/snapshot.sh - snapshot create and restore through the HTTP API, each beside its peer
# on the same workspace in the same run:
#   create  vs  tar -cf - . | zstd -3 -T0 > file
#   restore vs  zstd -d -c file | tar -x   (into a fresh directory)
# and the server's peak memory (VmHWM) while it snapshots the workspace.
#
# Usage: [BENCH_DIR=/dev/shm] bench/snapshot.sh [SCALE] [RUNS]   (SCALE for mkworkspace.sh: 1 ≈ 300 MiB,
#        3.5 ≈ 1 GiB)
# Needs: release builds (cargo build --release -p cloudterm -p cloudterm-agent), zstd, curl, python3.
set -euo pipefail
SCALE=${1:-1}
RUNS=${2:-3}
BIN=target/release
MKWS=${MKWORKSPACE:-$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/mkworkspace.sh}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
DATA=$(mktemp -d "$BENCH_DIR/ctbench.XXXXXX")
PEER=$(mktemp -d "$BENCH_DIR/ctpeer.XXXXXX")
chmod 711 "$DATA"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA" "$PEER"' EXIT

CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=process CLOUDTERM_SNAPSHOT_RETENTION=100 \
  "$BIN/cloudterm" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
URL="http://127.0.0.1:$PORT"
until curl -fs "$URL/health" >/dev/null; do sleep 0.05; done
TOKEN=$("$BIN/cloudterm" token bench --data-dir "$DATA")
api() { curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
# The home workspace's host directory: a process-runtime sandbox runs in it.
SBX=$(api -X POST "$URL/sandboxes" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
WS=$(api -X POST "$URL/sandboxes/$SBX/exec" -d '{"command": "pwd -P"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["stdout"].strip())')
api -X DELETE "$URL/sandboxes/$SBX"
case "$WS" in "$DATA"/workspaces/*) ;; *) echo "unexpected workspace dir $WS" >&2; exit 1 ;; esac
bash "$MKWS" "$WS" "$SCALE" >/dev/null
sync
SIZE=$(du -sm "$WS" | cut -f1)
FILES=$(find "$WS" -type f | wc -l)

now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$SERVER/status"; }

echo "workspace: $SIZE MiB, $FILES files; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server peak RSS before: $(hwm) MiB"
echo "| run | tar+zstd create | cloudterm create | zstd+tar restore | cloudterm restore |"
echo "|---|---|---|---|---|"
for run in $(seq 1 "$RUNS"); do
  sync
  t0=$(now); tar -C "$WS" -cf - . | zstd -3 -T0 -q -o "$PEER/peer.tar.zst" -f; t1=$(now)
  peer_create=$(ms "$t0" "$t1")
  sync
  t0=$(now); SNAP=$(api -X POST "$URL/snapshot/create" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_id"])'); t1=$(now)
  ours_create=$(ms "$t0" "$t1")
  [ "$run" = 1 ] && echo "server peak RSS after the first create: $(hwm) MiB" >&2
  rm -rf "$PEER/out"; mkdir "$PEER/out"; sync
  t0=$(now); zstd -d -c -q "$PEER/peer.tar.zst" | tar -C "$PEER/out" -xf -; t1=$(now)
  peer_restore=$(ms "$t0" "$t1")
  rm -rf "$PEER/out"; sync
  t0=$(now); api -X POST "$URL/snapshot/restore" -d "{\"snapshot_id\": \"$SNAP\"}" >/dev/null; t1=$(now)
  ours_restore=$(ms "$t0" "$t1")
  sleep 2; sync # the replaced tree is deleted in the background
  echo "| $run | $peer_create ms | $ours_create ms | $peer_restore ms | $ours_restore ms |"
done
echo "stored: cloudterm $(api "$URL/snapshot/$SNAP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"]//1048576)') MiB, tar+zstd $(($(stat -c %s "$PEER/peer.tar.zst") / 1048576)) MiB"
echo "server peak RSS after: $(hwm) MiB"
