#!/usr/bin/env bash
# Fetch the official Apache Kafka jars (see pom.xml) from Maven Central into
# var/kafka/libs under the repository root. Idempotent: when the jars for the
# current pom.xml are already there it returns at once.
#
#   deploy/kafka/fetch.sh            # fetch if needed
#   deploy/kafka/fetch.sh --force    # fetch again
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LIBS="$ROOT/var/kafka/libs"
STAMP="$LIBS/.pom.sha256"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

want="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
  echo "kafka jars already in $LIBS"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found (apt-get install maven)" >&2; exit 1; }

mkdir -p "$ROOT/var/kafka"
tmp="$(mktemp -d "$ROOT/var/kafka/libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetching kafka jars with maven into $LIBS ..."
# Maven's own output goes to a log, shown only when it fails.
if ! mvn -B -f "$HERE/pom.xml" \
    "$DEP_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >"$ROOT/var/kafka/fetch.log" 2>&1; then
  echo "fetch.sh: maven failed; last lines of var/kafka/fetch.log:" >&2
  tail -n 40 "$ROOT/var/kafka/fetch.log" >&2
  exit 1
fi

echo "$want" > "$tmp/.pom.sha256"
rm -rf "$LIBS"
mv "$tmp" "$LIBS"
trap - EXIT
echo "kafka jars: $(ls "$LIBS"/*.jar | wc -l) in $LIBS"
