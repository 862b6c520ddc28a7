#!/usr/bin/env bash
# bench/storage_quota.sh - what the enforced storage quota (an ext4 volume per workspace) adds,
# on the linux runtime, each figure beside the same one without a limit in the same run:
#   the first sandbox in a new workspace (the volume is made and mounted then);
#   a later sandbox in the same workspace (the volume exists);
#   a snapshot restore of a ~300 MiB workspace (mkworkspace.sh), unpacked beside the old tree.
#
# Usage: [BIN=target/release] [BENCH_DIR=/var/tmp] bench/storage_quota.sh [N] [RESTORES]   (as root)
# Needs: builds of cloudterm, cloudterm-agent, cloudterm-linux-helper in BIN, curl, python3,
#   e2fsprogs, mount. Every create asks for an env var, so none is served by the warm pool.
set -euo pipefail
N=${1:-20}
RESTORES=${2:-3}
BIN=${BIN:-target/release}
MKWS=${MKWORKSPACE:-$(cd "$(dirname "$0")/../.." && pwd)/shared/bench/mkworkspace.sh}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

run() { # $1: label, $2: storage MiB (0: none)
  local label=$1 mb=$2 data port url token server
  data=$(mktemp -d "$BENCH_DIR/ctquota.XXXXXX")
  chmod 711 "$data"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=linux CLOUDTERM_WARM_POOL=0 CLOUDTERM_QUOTA_STORAGE_MB=$mb \
    CLOUDTERM_QUOTA_MAX_SANDBOXES=1000 "$BIN/cloudterm" serve --data-dir "$data" --listen "127.0.0.1:$port" &
  server=$!
  url="http://127.0.0.1:$port"
  until curl -fs "$url/health" >/dev/null; do sleep 0.05; done
  token=$("$BIN/cloudterm" token bench --data-dir "$data")
  api() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
  # On any exit: sandboxes outlive their server, so they are deleted through it first.
  cleanup() {
    for s in $(api "$url/sandboxes" | python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)["sandboxes"] if x["state"] == "running"))'); do
      api -X DELETE "$url/sandboxes/$s" || true
    done
    kill "$server"; wait "$server" 2>/dev/null || true
    # Volumes stay mounted across a server stop (sandboxes outlive it); this data dir goes.
    { grep -o "$data/workspaces/[^ ]*" /proc/self/mountinfo || true; } | sort -r | xargs -r -n1 umount
    rm -rf "$data"
  }
  trap cleanup EXIT
  timed() { curl -fsS -o /tmp/ctquota.out -w '%{time_total}\n' -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
  id() { python3 -c "import json; print(json.load(open('/tmp/ctquota.out'))['$1'])"; }
  first=() later=()
  for i in $(seq 1 "$N"); do
    ws=$(api -X POST "$url/workspaces" -d "{\"name\": \"w$i\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    first+=("$(timed -X POST "$url/sandboxes" -d "{\"workspace_id\": \"$ws\", \"env\": {\"B\": \"1\"}}")")
    a=$(id id)
    later+=("$(timed -X POST "$url/sandboxes" -d "{\"workspace_id\": \"$ws\", \"env\": {\"B\": \"1\"}}")")
    b=$(id id)
    api -X DELETE "$url/sandboxes/$a"; api -X DELETE "$url/sandboxes/$b"
  done
  # Restore: a second principal's home workspace (its only one) filled on the host,
  # snapshotted once, restored RESTORES times.
  token=$("$BIN/cloudterm" token restorer --data-dir "$data")
  sbx=$(api -X POST "$url/sandboxes" -d '{"env": {"B": "1"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  home=$(find "$data/workspaces/restorer" -mindepth 1 -maxdepth 1 -type d)
  if [ -d "$home/files" ]; then home="$home/files"; fi
  bash "$MKWS" "$home" 1 >/dev/null
  sync
  snap=$(api -X POST "$url/snapshot/create" -d "{\"sandbox_id\": \"$sbx\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_id"])')
  restores=()
  for _ in $(seq 1 "$RESTORES"); do
    sync
    restores+=("$(timed -X POST "$url/snapshot/restore" -d "{\"snapshot_id\": \"$snap\"}")")
    sleep 2 # the replaced tree is deleted in the background
  done
  cleanup
  trap - EXIT
  python3 - "$label" "${first[*]}" "${later[*]}" "${restores[*]}" <<'PY'
import statistics, sys
label, first, later, restores = sys.argv[1], *[[float(x) * 1000 for x in a.split()] for a in sys.argv[2:]]
def p(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
print(f"| {label} | {p(first, .5):.1f} ms | {p(first, .9):.1f} ms | {p(later, .5):.1f} ms | {p(later, .9):.1f} ms | "
      f"{statistics.median(restores):.0f} ms |")
PY
}

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), BIN=$BIN, N=$N, RESTORES=$RESTORES"
echo "| storage limit | first sandbox in a new workspace p50 | p90 | next sandbox p50 | p90 | restore ~300 MiB (median) |"
echo "|---|---|---|---|---|---|"
run "none (plain directory)" 0
run "1024 MiB (ext4 volume)" 1024
