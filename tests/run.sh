#!/usr/bin/env bash
# Runs the whole suite the way CI does. Kafka: the tests' own fixture starts the local broker
# (or uses KAFKA_BOOTSTRAP_SERVERS). PostgreSQL: CONTACTSYNC_TEST_POSTGRES_URL if set; else a
# throwaway server from .ci/postgres.sh where that can run (root, Debian), else those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
started_pg=""
if [ -z "${CONTACTSYNC_TEST_POSTGRES_URL:-}" ] && [ -f .ci/postgres.sh ] && [ "$(id -u)" = 0 ]; then
  pg_dir=$(mktemp -d /tmp/contactsync-pg.XXXXXX)
  if url=$(bash .ci/postgres.sh "$pg_dir" | tail -n 1) && [ -n "$url" ]; then
    export CONTACTSYNC_TEST_POSTGRES_URL="$url"
    started_pg="$pg_dir"
  else
    echo "note: PostgreSQL could not be started; its tests will be skipped" >&2
  fi
fi
cleanup() { [ -n "$started_pg" ] && bash .ci/postgres.sh stop "$started_pg" >/dev/null 2>&1 || true; }
trap cleanup EXIT
.venv/bin/pytest -q "$@"
