#!/usr/bin/env bash
# bench/network.sh - what sandbox networking costs, each row beside its peer in the same run:
#   create → first exec without the warm pool (every create starts a container), network none vs nat;
#   create → first exec with the warm pool (claims), none vs nat with an egress quota (the claim sets it);
#   exec round trip, none vs nat with an egress quota (each exec reads the count for X-Quota-Warning).
#
# Usage: bench/network.sh [N]    (as root; needs nftables and iproute2)
#   cargo build --release -p cloudterm -p cloudterm-agent -p cloudterm-runtime-linux -p cloudterm-bench
set -euo pipefail
N=${1:-100}
BIN=target/release
DATA=$(mktemp -d)
chmod 711 "$DATA"
SERVER=
stop_server() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  SERVER=
}
trap 'stop_server; rm -rf "$DATA"' EXIT

# serve NAME [VAR=VALUE…]: a fresh server with its own data dir and these settings.
serve() {
  stop_server
  local dir="$DATA/$1"; shift
  mkdir -p "$dir"; chmod 711 "$dir"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env CLOUDTERM_LOG=warn CLOUDTERM_RUNTIME=linux CLOUDTERM_QUOTA_MAX_SANDBOXES=1000 CLOUDTERM_SANDBOX_MEMORY_MB=256 \
    CLOUDTERM_SANDBOX_NETWORK_RANGE=10.215.0.0/22 "$@" \
    "$BIN/cloudterm" serve --data-dir "$dir" --listen "127.0.0.1:$PORT" &
  SERVER=$!
  until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.05; done
  export CLOUDTERM_URL="http://127.0.0.1:$PORT"
  CLOUDTERM_TOKEN=$("$BIN/cloudterm" token bench --data-dir "$dir")
  export CLOUDTERM_TOKEN
  sleep 1 # let a warm pool fill
}

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for network in none nat; do
  serve "cold-$network" CLOUDTERM_WARM_POOL=0 CLOUDTERM_SANDBOX_NETWORK=$network
  "$BIN/cloudterm-bench" create --n "$N" --no-peers --label "no warm pool, network $network"
done
echo
for network in none nat; do
  serve "warm-$network" CLOUDTERM_SANDBOX_NETWORK=$network CLOUDTERM_QUOTA_EGRESS_MB=1024
  "$BIN/cloudterm-bench" create --n "$N" --pace-ms 100 --no-peers --label "warm pool, network $network, egress quota"
  "$BIN/cloudterm-bench" exec-rtt --n 1000
done
