#!/usr/bin/env bash
# bench/preview.sh - preview proxy throughput and latency with wrk: the same app inside a
# sandbox, hit through /preview/{sandbox}/{port}/ and directly inside the sandbox's network
# (wrk in the sandbox's network namespace via nsenter on the linux runtime; 127.0.0.1 on the
# process runtime). The app is the tests' standard-library Python server
# (crates/cloudterm-server/tests/it/fixtures/preview_app.py, HTTP/1.1 keep-alive).
#
# Usage: bench/preview.sh [RUNTIME] [DURATION] [CONNECTIONS] [RUNS]   (RUNTIME linux|process, default
# linux; RUNS of each side, alternating direct and preview, default 3: on shared cores one run
# of each says little)
# Needs: wrk (apt-get install wrk), python3, curl, root for the linux runtime, release builds:
#   cargo build --release -p cloudterm -p cloudterm-agent -p cloudterm-runtime-linux
set -euo pipefail
RUNTIME=${1:-linux}
DURATION=${2:-10s}
CONNS=${3:-16}
RUNS=${4:-3}
BIN=${BIN:-target/release}  # another build to compare: BIN=DIR (with cloudterm-agent and cloudterm-linux-helper beside)
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

# CPU seconds (user + system) used so far by the given pids.
cpu() { for pid in "$@"; do cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null; done | awk -v hz="$(getconf CLK_TCK)" '{t += $1 + $2} END {printf "%.2f", t / hz}'; }
# The sandbox's processes (agent and app): those in its cgroup (all of the host's python3
# processes on the process runtime, where the app is not in a cgroup of its own).
sandbox_pids() {
  if [ "$RUNTIME" = linux ]; then grep -l "$SBX" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3
  else pgrep -f "preview_app.py $APP_PORT"; pgrep -f cloudterm-agent; fi
}
# TCP counters of the sandbox's network: connections the app accepted, and handshakes its
# listen queue dropped (each one costs the client a one-second SYN retransmit).
tcp_counters() {
  "${DIRECT[@]}" nstat -asz TcpPassiveOpens TcpExtListenOverflows TcpExtListenDrops 2>/dev/null | awk 'NR > 1 {printf "%s ", $2}'
}
# Times the sandbox's CPU limit (1 CPU by default) throttled it, and for how long (ms).
throttled() {
  [ "$RUNTIME" = linux ] || return 0
  local dir
  dir=$(grep -E '^[0-9]+:[^:]*cpu[,:]' "/proc/$PID/cgroup" | head -1 | cut -d: -f3)
  awk '/^nr_throttled/ {n = $2} /^throttled_time/ {t = $2 / 1e6} END {printf "%d %d", n, t}' \
    /sys/fs/cgroup/cpu"$dir"/cpu.stat 2>/dev/null || true
}
# Runs wrk and then says how much CPU the server, the sandbox and wrk itself used meanwhile,
# and how many connections the app accepted.
measure() {
  local pids server_before sandbox_before tcp_before tcp_after thr_before
  pids=$(sandbox_pids | tr '\n' ' ')
  server_before=$(cpu "$SERVER"); sandbox_before=$(cpu $pids); tcp_before=$(tcp_counters); thr_before=$(throttled)
  /usr/bin/time -f "cpu seconds: wrk %U user + %S system" "$@"
  echo "cpu seconds: server $(echo "$(cpu "$SERVER") - $server_before" | bc), sandbox (agent + app) $(echo "$(cpu $pids) - $sandbox_before" | bc)"
  read -r -a tb <<<"$thr_before"; read -r -a ta <<<"$(throttled)"
  [ "${#ta[@]}" = 2 ] && echo "sandbox cpu limit: throttled $((ta[0] - tb[0])) times, $((ta[1] - tb[1])) ms"
  tcp_after=$(tcp_counters)
  read -r -a b <<<"$tcp_before"; read -r -a a <<<"$tcp_after"
  [ "${#a[@]}" = 3 ] && echo "app's network: $((a[0] - b[0])) connections accepted, $((a[1] - b[1])) listen overflows, $((a[2] - b[2])) listen drops"
  true
}

echo "runtime: $RUNTIME, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), wrk -t2 -c$CONNS -d$DURATION, $RUNS runs of each side"
for path in whoami "big?mb=1"; do
  for run in $(seq "$RUNS"); do
    echo
    echo "== run $run, direct, inside the sandbox's network: GET /$path (load $(cut -d' ' -f1 /proc/loadavg))"
    measure "${DIRECT[@]}" wrk -t2 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$APP_PORT/$path"
    echo
    echo "== run $run, through the preview (owner's bearer token): GET /preview/$SBX/$APP_PORT/$path (load $(cut -d' ' -f1 /proc/loadavg))"
    measure wrk -t2 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "$URL/preview/$SBX/$APP_PORT/$path"
  done
  # New connections to the app, and the server's own view of the time to the answer's head.
  curl -fs "$URL/metrics" | grep -E '^preview_target_connections_total|^http_request_duration_seconds_bucket.*route="/preview/\{sandbox_id\}/\{port\}/\{\*path\}"' || true
done
