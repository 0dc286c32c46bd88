#!/usr/bin/env bash
# Stop what local-up.sh started (this head's process group only, and its PgBouncer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rundir=${WTB_RAY_RUN_DIR:-/tmp/wtb-ray}
if [ -f "$rundir/pgid" ]; then
  pgid=$(cat "$rundir/pgid")
  # Processes of the group still running (exited ones may linger as zombies: not counted).
  running() { ps -eo pgid=,stat= | awk -v g="$pgid" '$1 == g && $2 !~ /^Z/ {n++} END {exit !n}'; }
  # `ray start --block` (the group's leader) stops the head's processes in order on SIGTERM,
  # in a second or two; signalled all at once, they took up to 40 s. The group only if the
  # leader is gone already.
  kill -TERM "$pgid" 2>/dev/null || kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 60); do running || break; sleep 0.25; done
  if running; then
    echo "the Ray head did not stop within 15 s of SIGTERM; killing what is left" >&2
  fi
  kill -KILL -- "-$pgid" 2>/dev/null || true
  rm -f "$rundir/pgid" "$rundir/address"
fi
[ -d "$rundir/pgbouncer" ] && "$here/pgbouncer/stop.sh" "${WTB_PGBOUNCER_PORT:-6432}" "$rundir/pgbouncer"
echo "stopped" >&2
