#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server from Debian's packages on 127.0.0.1 and prints its SQLAlchemy URL.
# Used by .ci/run and by the PostgreSQL tests; idempotent for one data directory.
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$PGBIN" ] || { echo "postgresql is not installed (apt-get install postgresql)" >&2; exit 1; }
DATA=${RUNLENS_PG_DATA:-/tmp/runlens-pg}
PORT=${RUNLENS_PG_PORT:-54329}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"; [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  as_pg "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
fi
if ! as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" \
    -l "$DATA/server.log" -w start >/dev/null
fi
echo "postgresql://postgres@127.0.0.1:$PORT/postgres"
