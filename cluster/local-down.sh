#!/usr/bin/env bash
# Stop what local-up.sh started (this head's process group only, and its PgBouncer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rundir=${WTB_RAY_RUN_DIR:-/tmp/wtb-ray}
if [ -f "$rundir/pgid" ]; then
  pgid=$(cat "$rundir/pgid")
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  rm -f "$rundir/pgid" "$rundir/address"
fi
[ -d "$rundir/pgbouncer" ] && "$here/pgbouncer/stop.sh" "${WTB_PGBOUNCER_PORT:-6432}" "$rundir/pgbouncer"
echo "stopped" >&2
