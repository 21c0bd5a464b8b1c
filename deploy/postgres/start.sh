#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for development and tests, from the
# Debian packages (apt-get install postgresql). No Docker, no systemd needed.
#
#   deploy/postgres/start.sh      # idempotent: "already running" is success
#
# - listens on 127.0.0.1:${HOTLINE_PG_PORT:-5432} only (plus a unix socket in
#   the cluster directory), trust authentication: for local test use only;
# - cluster in ${HOTLINE_PG_DIR:-/tmp/hotline-pg-<port>} (data/, postgres.log),
#   owned by the OS user `postgres` when we are root;
# - creates databases `hotline` and `hotline_test`;
# - prints the SQLAlchemy URL of hotline_test on stdout (last line).
# Stop with deploy/postgres/stop.sh [--wipe].
set -euo pipefail

PORT="${HOTLINE_PG_PORT:-5432}"
BASE="${HOTLINE_PG_DIR:-/tmp/hotline-pg-$PORT}"
DATA="$BASE/data"
LOG="$BASE/postgres.log"
DATABASES=(hotline hotline_test)

pg_bin() {
  local d
  if [[ -n "${HOTLINE_PG_BIN:-}" ]]; then echo "$HOTLINE_PG_BIN"; return; fi
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -z "$d" ]]; then
    echo "postgres/start.sh: no /usr/lib/postgresql/*/bin; apt-get install postgresql" >&2
    return 1
  fi
  echo "$d"
}
BIN="$(pg_bin)"

# Run as the `postgres` OS user when we are root (initdb refuses to run as root).
if [[ "$(id -u)" == 0 ]]; then
  PGUSER_OS=postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  PGUSER_OS="$(id -un)"
  as_pg() { "$@"; }
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
psql_() { as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

mkdir -p "$BASE"
chown "$PGUSER_OS" "$BASE"
chmod 700 "$BASE"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
  echo "initdb in $DATA" >&2
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 --no-sync >"$BASE/initdb.log" 2>&1 || {
      cat "$BASE/initdb.log" >&2; exit 1; }
  echo "include_if_exists = 'hotline.conf'" >> "$DATA/postgresql.conf"
fi

# Settings for a throwaway test cluster; rewritten on each start (port may change).
as_pg tee "$DATA/hotline.conf" >/dev/null <<EOF
# Written by deploy/postgres/start.sh -- throwaway test cluster, NOT for production.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BASE'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF

if as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  echo "postgres already running in $DATA" >&2
else
  if port_open "$PORT"; then
    echo "postgres/start.sh: 127.0.0.1:$PORT is already in use by another process" >&2
    echo "  (a Debian cluster? see pg_lsclusters; stop it with pg_ctlcluster <ver> main stop," >&2
    echo "   or choose another port with HOTLINE_PG_PORT)" >&2
    exit 1
  fi
  echo "starting postgres on 127.0.0.1:$PORT (log: $LOG)" >&2
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null || {
    echo "postgres failed to start; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  }
fi

for i in $(seq 1 60); do
  psql_ -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
  if (( i == 60 )); then
    echo "postgres does not answer on 127.0.0.1:$PORT; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done

for db in "${DATABASES[@]}"; do
  if [[ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
    psql_ -d postgres -c "CREATE DATABASE $db" >/dev/null
    echo "created database $db" >&2
  fi
done

echo "postgres is up on 127.0.0.1:$PORT" >&2
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/hotline_test"
