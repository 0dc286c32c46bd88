#!/usr/bin/env bash
# Stop the PgBouncer started by start.sh. Usage: stop.sh [PORT] [RUNDIR]
set -euo pipefail
port=${1:-6432}
rundir=${2:-/tmp/wtb-pgbouncer-$port}
pidfile="$rundir/pgbouncer.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
kill "$pid" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
kill -9 "$pid" 2>/dev/null || true
