#!/usr/bin/env bash
# A multi-node Ray cluster on loopback: one head plus one worker node per site, each worker
# advertising the custom resource `site:<name>`, so a site's actor can only land there.
#
#   ray_cluster/local_cluster.sh start northgate riverside st-jude   # prints the address
#   ray_cluster/local_cluster.sh stop
#
# One cluster is one trust domain (Ray runs code for any client that reaches it), so the
# cluster uses Ray's token authentication and keeps the dashboard off (or on loopback).
# Clients need the same token: `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<printed path>`.
set -euo pipefail

STATE="${PIPELINE_CLUSTER_DIR:-${TMPDIR:-/tmp}/pipeline-ray-cluster}"
PORT="${PIPELINE_CLUSTER_PORT:-6390}"
RAY="${RAY:-$(dirname "$0")/../.venv/bin/ray}"
[ -x "$RAY" ] || RAY="$(command -v ray)"

export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/token"

start() {
  [ "$#" -ge 1 ] || { echo "usage: $0 start SITE [SITE ...]" >&2; exit 2; }
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if [ ! -s "$STATE/token" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/token")
  fi
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 \
    --include-dashboard=false --disable-usage-stats --temp-dir="$STATE/ray" \
    >"$STATE/head.log" 2>&1
  for site in "$@"; do
    "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 \
      --resources="{\"site:$site\": 1}" --disable-usage-stats --temp-dir="$STATE/ray" \
      >"$STATE/worker-$site.log" 2>&1
  done
  echo "address=127.0.0.1:$PORT"
  echo "token_path=$STATE/token"
}

# Only this cluster's processes: `ray stop` would end every Ray instance on the machine.
stop() {
  pkill -TERM -f -- "$STATE/ray" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pgrep -f -- "$STATE/ray" >/dev/null || break
    sleep 1
  done
  pkill -KILL -f -- "$STATE/ray" 2>/dev/null || true
  echo "stopped"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start SITE [SITE ...] | stop" >&2; exit 2 ;;
esac
