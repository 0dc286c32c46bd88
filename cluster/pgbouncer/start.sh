#!/usr/bin/env bash
# Start a PgBouncer (transaction mode) on 127.0.0.1:PORT in front of PostgreSQL.
# Installs PgBouncer and starts PostgreSQL if needed. Usage: start.sh [PORT] [RUNDIR]
# Env: PGHOST (127.0.0.1), PGPORT (5432), WTB_PGBOUNCER_LISTEN (127.0.0.1).
set -euo pipefail
port=${1:-6432}
rundir=${2:-/tmp/wtb-pgbouncer-$port}
here=$(cd "$(dirname "$0")" && pwd)
"$here/../postgres/ensure.sh"

if ! command -v pgbouncer >/dev/null 2>&1; then
  echo "installing pgbouncer (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq pgbouncer >/dev/null
fi

mkdir -p "$rundir"
sed -e "s|@PORT@|$port|g" -e "s|@RUNDIR@|$rundir|g" \
    -e "s|@PGHOST@|${PGHOST:-127.0.0.1}|g" -e "s|@PGPORT@|${PGPORT:-5432}|g" \
    -e "s|@LISTEN_ADDR@|${WTB_PGBOUNCER_LISTEN:-127.0.0.1}|g" \
    "$here/pgbouncer.ini.template" > "$rundir/pgbouncer.ini"
echo '"postgres" ""' > "$rundir/userlist.txt"

if [ -f "$rundir/pgbouncer.pid" ] && kill -0 "$(cat "$rundir/pgbouncer.pid")" 2>/dev/null; then
  echo "pgbouncer already running on port $port (pid $(cat "$rundir/pgbouncer.pid"))" >&2
  exit 0
fi
rm -f "$rundir/pgbouncer.pid"
# PgBouncer refuses to run as root.
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$rundir"
  pgbouncer -d -u postgres "$rundir/pgbouncer.ini"
else
  pgbouncer -d "$rundir/pgbouncer.ini"
fi
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "pgbouncer listening on 127.0.0.1:$port (run dir $rundir)" >&2
    exit 0
  fi
  sleep 0.1
done
echo "pgbouncer did not start; see $rundir/pgbouncer.log" >&2
exit 1
