#!/usr/bin/env bash
# Start a local Ray head (token authentication on, dashboard on 127.0.0.1) and, with
# --postgres, a PgBouncer in front of the local PostgreSQL with the WTB schema applied.
#
#   cluster/local-up.sh [--postgres]        then: source $WTB_RAY_RUN_DIR/env
#   cluster/local-down.sh
#
# Env: WTB_RAY_RUN_DIR (/tmp/wtb-ray), WTB_RAY_DASHBOARD_PORT (8265), WTB_RAY_NUM_CPUS,
#      WTB_RAY_AGENT_PORT, WTB_RAY_CLIENT_PORT (default: free ports),
#      WTB_PGBOUNCER_PORT (6432), WTB_PG_DATABASE (wtb).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rundir=${WTB_RAY_RUN_DIR:-/tmp/wtb-ray}
dashboard_port=${WTB_RAY_DASHBOARD_PORT:-8265}
mkdir -p "$rundir"
export RAY_AUTH_MODE=token
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [ -f "$rundir/pgid" ] && kill -0 -- "-$(cat "$rundir/pgid")" 2>/dev/null; then
  echo "a Ray head started from $rundir is already running" >&2
else
  cpus=()
  [ -n "${WTB_RAY_NUM_CPUS:-}" ] && cpus=(--num-cpus "$WTB_RAY_NUM_CPUS")
  # Ray's agent and client server default to fixed ports (52365, 10001) that another Ray
  # instance on this machine may hold already: take free ones.
  agent_port=${WTB_RAY_AGENT_PORT:-$(free_port)}
  client_port=${WTB_RAY_CLIENT_PORT:-$(free_port)}
  # Its own process group, so local-down.sh stops exactly this head and nothing else.
  # No drain on SIGTERM: Ray waits (30 s by default) for every worker lease to be returned,
  # which a detached orchestrator or a warm executor never does; a local head has no
  # traffic to move elsewhere, so it stops in seconds instead.
  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 setsid ray start --head --port=0 --dashboard-host=127.0.0.1 \
    --dashboard-port="$dashboard_port" --dashboard-agent-listen-port="$agent_port" \
    --ray-client-server-port="$client_port" --disable-usage-stats "${cpus[@]}" --block \
    > "$rundir/ray.log" 2>&1 &
  echo $! > "$rundir/pgid"
  # Whatever goes wrong from here, do not leave a half-started head behind.
  trap 'status=$?; [ $status = 0 ] || "$here/local-down.sh" >/dev/null 2>&1; exit $status' EXIT
  for _ in $(seq 1 120); do
    address=$(grep -o "ray start --address='[^']*'" "$rundir/ray.log" | head -n 1 | cut -d"'" -f2 || true)
    [ -n "$address" ] && break
    kill -0 "$(cat "$rundir/pgid")" 2>/dev/null || { cat "$rundir/ray.log" >&2; exit 1; }
    sleep 0.5
  done
  [ -n "${address:-}" ] || { echo "Ray did not start; see $rundir/ray.log" >&2; exit 1; }
  echo "$address" > "$rundir/address"
  # The job API answers before the head's job agent has registered; a no-op job that
  # succeeds is the proof that `ray job submit` will work.
  for attempt in $(seq 1 60); do
    if ray job submit --address "http://127.0.0.1:$dashboard_port" -- python -c pass \
        > "$rundir/ready.log" 2>&1; then
      break
    fi
    [ "$attempt" = 60 ] && { cat "$rundir/ready.log" >&2; exit 1; }
    sleep 2
  done
  echo "Ray head at $address, dashboard http://127.0.0.1:$dashboard_port" >&2
fi

{
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_ADDRESS=$(cat "$rundir/address")"
  echo "export WTB_RAY_DASHBOARD=http://127.0.0.1:$dashboard_port"
} > "$rundir/env"

if [ "${1:-}" = "--postgres" ]; then
  port=${WTB_PGBOUNCER_PORT:-6432}
  db=${WTB_PG_DATABASE:-wtb}
  "$here/postgres/ensure.sh"
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
    | grep -q 1 || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db"
  "$here/pgbouncer/start.sh" "$port" "$rundir/pgbouncer"
  url="postgresql://postgres@127.0.0.1:$port/$db"
  wtb db upgrade --db "$url" >&2
  echo "export WTB_DATABASE_URL=$url" >> "$rundir/env"
fi
echo "now: source $rundir/env" >&2
