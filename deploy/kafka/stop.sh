#!/usr/bin/env bash
# Stop the Kafka started by deploy/kafka/start.sh (by its pid file).
#
#   deploy/kafka/stop.sh           # stop, keep data
#   deploy/kafka/stop.sh --wipe    # stop and delete var/kafka/data (or $HOTLINE_KAFKA_DIR/data)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KDIR="${HOTLINE_KAFKA_DIR:-$ROOT/var/kafka}"  # as in start.sh
PIDFILE="$KDIR/kafka.pid"
WAIT="${HOTLINE_KAFKA_STOP_TIMEOUT:-60}"

wipe=0
for a in "$@"; do
  case "$a" in
    --wipe) wipe=1 ;;
    *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
  esac
done

if [[ -f "$PIDFILE" ]]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping kafka (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < WAIT * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka did not stop within ${WAIT}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  else
    echo "kafka not running (stale pid file)"
  fi
  rm -f "$PIDFILE"
else
  echo "kafka not running (no pid file)"
fi

if (( wipe )); then
  echo "wiping $KDIR/data"
  rm -rf "$KDIR/data" "$KDIR/config"
fi
