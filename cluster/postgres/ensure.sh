#!/usr/bin/env bash
# Make sure PostgreSQL answers on ${PGHOST:-127.0.0.1}:${PGPORT:-5432}; start the local
# Debian cluster if it is down.
set -euo pipefail
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
up() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
up && exit 0
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 100); do up && exit 0; sleep 0.1; done
echo "PostgreSQL is not reachable on $host:$port" >&2
exit 1
