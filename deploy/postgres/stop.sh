#!/usr/bin/env bash
# Stop the throwaway PostgreSQL cluster started by deploy/postgres/start.sh.
#
#   deploy/postgres/stop.sh          # stop, keep data
#   deploy/postgres/stop.sh --wipe   # stop and delete the cluster directory
set -euo pipefail

PORT="${HOTLINE_PG_PORT:-5432}"
BASE="${HOTLINE_PG_DIR:-/tmp/hotline-pg-$PORT}"
DATA="$BASE/data"

wipe=0
for a in "$@"; do
  case "$a" in
    --wipe) wipe=1 ;;
    *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
  esac
done

BIN="${HOTLINE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [[ "$(id -u)" == 0 ]]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

if [[ -f "$DATA/PG_VERSION" && -n "$BIN" ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  echo "stopping postgres in $DATA"
  as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
else
  echo "postgres not running in $DATA"
fi

if (( wipe )); then
  echo "wiping $BASE"
  rm -rf "$BASE"
fi
