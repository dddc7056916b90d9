#!/usr/bin/env bash
# Runs the whole suite the way CI does. Kafka: the tests' own fixture starts the local broker
# (or uses KAFKA_BOOTSTRAP_SERVERS). PostgreSQL: CONTACTSYNC_TEST_POSTGRES_URL if set; else a
# throwaway server from .ci/postgres.sh where that can run, else the PostgreSQL cases skip.
set -euo pipefail
cd "$(dirname "$0")/.."
started_pg=""
if [ -z "${CONTACTSYNC_TEST_POSTGRES_URL:-}" ]; then
  if url=$(bash .ci/postgres.sh start 2>/dev/null | tail -n 1) && [ -n "$url" ]; then
    export CONTACTSYNC_TEST_POSTGRES_URL="$url"
    started_pg=yes
  else
    echo "note: PostgreSQL could not be started; its test cases will be skipped" >&2
  fi
fi
# The console's browser test drives Debian's Chromium headless; install it where it is missing.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "note: Chromium could not be installed; the browser test will skip" >&2
fi
cleanup() { if [ -n "$started_pg" ]; then bash .ci/postgres.sh stop >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
.venv/bin/pytest -q "$@"
