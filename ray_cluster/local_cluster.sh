#!/usr/bin/env bash
# A multi-node Ray cluster on loopback: one head plus one worker node per site, each worker
# advertising the custom resource `site:<name>`, so a site's actor can only land there.
#
#   ray_cluster/local_cluster.sh start northgate riverside st-jude   # prints the address
#   ray_cluster/local_cluster.sh stop
#
# One cluster is one trust domain (Ray runs code for any client that reaches it), so the
# cluster uses Ray's token authentication and keeps the dashboard off, or, for Ray Jobs
# (`ray job submit`, which goes through the dashboard's job server), on loopback only:
# set PIPELINE_CLUSTER_JOBS_PORT (e.g. 8265) and the script prints the jobs address too.
# Clients need the same token: `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<printed path>`.
set -euo pipefail

STATE="${PIPELINE_CLUSTER_DIR:-${TMPDIR:-/tmp}/pipeline-ray-cluster}"
PORT="${PIPELINE_CLUSTER_PORT:-6390}"
JOBS_PORT="${PIPELINE_CLUSTER_JOBS_PORT:-}"
# Every node runs a dashboard agent; on one machine each needs ports of its own (Ray's
# default, 52365, is taken by whichever Ray instance on the machine started first).
AGENT_PORT="${PIPELINE_CLUSTER_AGENT_PORT:-$((PORT + 100))}"

agent_ports() {  # agent_ports N: the listen and gRPC ports of node N (0 = head)
  echo "--dashboard-agent-listen-port=$((AGENT_PORT + 2 * $1))" \
    "--dashboard-agent-grpc-port=$((AGENT_PORT + 2 * $1 + 1))"
}
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
  if [ -n "$JOBS_PORT" ]; then
    dashboard=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$JOBS_PORT")
  else
    dashboard=(--include-dashboard=false)
  fi
  # shellcheck disable=SC2046  # agent_ports prints two separate options
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 \
    "${dashboard[@]}" $(agent_ports 0) --disable-usage-stats --temp-dir="$STATE/ray" \
    >"$STATE/head.log" 2>&1
  n=0
  for site in "$@"; do
    n=$((n + 1))
    # shellcheck disable=SC2046
    "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 \
      --resources="{\"site:$site\": 1}" $(agent_ports "$n") --disable-usage-stats \
      --temp-dir="$STATE/ray" >"$STATE/worker-$site.log" 2>&1
  done
  echo "address=127.0.0.1:$PORT"
  echo "token_path=$STATE/token"
  [ -z "$JOBS_PORT" ] || echo "jobs_address=http://127.0.0.1:$JOBS_PORT"
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
