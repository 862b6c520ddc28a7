#!/usr/bin/env bash
# bench/snapshot_layer.sh - a live snapshot of a running linux-runtime sandbox (its workspace AND
# its writable layer: what the user installed outside /workspace) and a new sandbox started from
# it, each beside its peer on the same trees in the same run:
#   POST /snapshot/create {sandbox_id}   vs  tar -cf - (workspace + layer) | zstd -3 -T0 > file
#   POST /sandboxes {snapshot_id}        vs  zstd -d -c file | tar -x   (into a fresh directory)
# Ours does more in both: it freezes the sandbox for the walk and thaws it, hashes what it
# stores, and the start from the snapshot also starts a sandbox (a cold start, ~40 ms here).
#
# Usage: [BENCH_DIR=/dev/shm] bench/snapshot_layer.sh [SCALE] [LAYER_SCALE] [RUNS]
#   SCALE for ../shared/bench/mkworkspace.sh in /workspace (1 ≈ 300 MiB), LAYER_SCALE for the
#   same generator in /opt/tool (the layer; 0.3 ≈ 90 MiB).
# Needs: root, release builds (cargo build --release -p cloudterm -p cloudterm-agent
#   -p cloudterm-runtime-linux), zstd, curl, python3.
set -euo pipefail
SCALE=${1:-1}
LAYER_SCALE=${2:-0.3}
RUNS=${3:-3}
BIN=target/release
MKWS=${MKWORKSPACE:-$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/mkworkspace.sh}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
DATA=$(mktemp -d "$BENCH_DIR/ctbench.XXXXXX")
PEER=$(mktemp -d "$BENCH_DIR/ctpeer.XXXXXX")
chmod 711 "$DATA"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SANDBOXES=()
cleanup() {
  # Sandboxes outlive their server on purpose: delete ours first.
  for id in "${SANDBOXES[@]}"; do api -X DELETE "$URL/sandboxes/$id" >/dev/null 2>&1 || true; done
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA" "$PEER"
}
trap cleanup EXIT

CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=linux CLOUDTERM_WARM_POOL=0 CLOUDTERM_SNAPSHOT_RETENTION=100 \
  CLOUDTERM_QUOTA_MAX_SANDBOXES=100 "$BIN/cloudterm" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" &
SERVER=$!
URL="http://127.0.0.1:$PORT"
until curl -fs "$URL/health" >/dev/null; do sleep 0.05; done
TOKEN=$("$BIN/cloudterm" token bench --data-dir "$DATA")
api() { curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
sh_in() { api -X POST "$URL/sandboxes/$1/exec" -d "$(python3 -c 'import json,sys; print(json.dumps({"command": sys.argv[1], "timeout_seconds": 600}))' "$2")"; }

# On tmpfs (BENCH_DIR=/dev/shm) the trees' pages count against the sandbox's memory limit.
SBX=$(api -X POST "$URL/sandboxes" -d '{"limits": {"memory_mb": 8192}}' | field id)
SANDBOXES+=("$SBX")
api -X PUT --data-binary "@$MKWS" "$URL/sandboxes/$SBX/files/mkworkspace.sh" >/dev/null
sh_in "$SBX" "bash /workspace/mkworkspace.sh /workspace/ws $SCALE >/dev/null && bash /workspace/mkworkspace.sh /opt/tool $LAYER_SCALE >/dev/null && rm /workspace/mkworkspace.sh && sync" | python3 -c "import json,sys; r=json.load(sys.stdin); sys.exit(0) if r[\"exit_code\"] == 0 else sys.exit(\"generating the trees failed: %s\" % r)"
# The same trees seen from the host, for the peer: through the sandbox's own root.
ROOT=
for pid in $(grep -l "$SBX" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3); do
  [ -d "/proc/$pid/root/opt/tool" ] && { ROOT=/proc/$pid/root; break; }
done
[ -n "$ROOT" ] || { echo "cannot find the sandbox's root from the host" >&2; exit 1; }
WS_MB=$(du -sm "$ROOT/workspace" | cut -f1); LAYER_MB=$(du -sm "$ROOT/opt/tool" | cut -f1)
FILES=$(find "$ROOT/workspace" "$ROOT/opt/tool" -type f | wc -l)

now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$SERVER/status"; }

echo "workspace $WS_MB MiB + layer $LAYER_MB MiB, $FILES files; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server peak RSS before: $(hwm) MiB"
echo "| run | tar+zstd create | cloudterm create (live, frozen) | zstd+tar extract | cloudterm start from snapshot |"
echo "|---|---|---|---|---|"
for run in $(seq 1 "$RUNS"); do
  sync
  t0=$(now); tar -cf - -C "$ROOT" workspace opt/tool | zstd -3 -T0 -q -o "$PEER/peer.tar.zst" -f; t1=$(now)
  peer_create=$(ms "$t0" "$t1")
  sync
  t0=$(now); SNAP=$(api -X POST "$URL/snapshot/create" -d "{\"sandbox_id\": \"$SBX\"}" | field snapshot_id); t1=$(now)
  ours_create=$(ms "$t0" "$t1")
  rm -rf "$PEER/out"; mkdir "$PEER/out"; sync
  t0=$(now); zstd -d -c -q "$PEER/peer.tar.zst" | tar -C "$PEER/out" -xf -; t1=$(now)
  peer_restore=$(ms "$t0" "$t1")
  rm -rf "$PEER/out"; sync
  t0=$(now); NEW=$(api -X POST "$URL/sandboxes" -d "{\"snapshot_id\": \"$SNAP\"}" | field id); t1=$(now)
  ours_restore=$(ms "$t0" "$t1")
  SANDBOXES+=("$NEW")
  # The new sandbox has both trees.
  [ "$(sh_in "$NEW" 'ls /opt/tool/bin | wc -l; ls /workspace/ws/bin | wc -l' | field stdout | tr '\n' ' ')" != "0 0 " ] || { echo "empty restore" >&2; exit 1; }
  api -X DELETE "$URL/sandboxes/$NEW" >/dev/null
  sleep 2; sync
  echo "| $run | $peer_create ms | $ours_create ms | $peer_restore ms | $ours_restore ms |"
done
stored=$(api "$URL/snapshot/$SNAP" | python3 -c 'import json,sys; s=json.load(sys.stdin); print((s["stored_bytes"] + (s.get("layer") or {}).get("stored_bytes", 0)) // 1048576)')
echo "stored: cloudterm $stored MiB (workspace + layer objects), tar+zstd $(($(stat -c %s "$PEER/peer.tar.zst") / 1048576)) MiB"
echo "server peak RSS after: $(hwm) MiB"
