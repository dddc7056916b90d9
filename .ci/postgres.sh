#!/usr/bin/env bash
# Make a throwaway PostgreSQL server available for tests and CI (Debian 12, as root or a user).
#
#   .ci/postgres.sh [start] [DIR]   start (or reuse) a server; the last stdout line is its URL
#   .ci/postgres.sh stop [DIR]      stop it (the data stays in DIR; rm -rf DIR to forget it)
#
# DIR defaults to $CONTACTSYNC_PG_DIR or /tmp/contactsync-postgres. Installs Debian's
# `postgresql` package when no server binaries are found. The cluster trusts every local and
# loopback login, and runs with fsync off: it is for tests only, never for data you want to keep.
# Stdout carries nothing but the URL, so `URL=$(.ci/postgres.sh)` works; errors go to stderr.
set -euo pipefail

DB_NAME=contactsync_test
PG_BIN_GLOB=${PG_BIN_GLOB:-/usr/lib/postgresql/*/bin}

action=start
case "${1:-}" in
  start|stop) action=$1; shift ;;
esac
DIR=${1:-${CONTACTSYNC_PG_DIR:-/tmp/contactsync-postgres}}
DATA=$DIR/data
SOCKET=$DIR/socket
LOG=$DIR/server.log
PORT_CONF=$DATA/contactsync.conf

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bin() {
  local dir
  # Highest installed major version first.
  for dir in $(ls -d $PG_BIN_GLOB 2>/dev/null | sort -V -r); do
    if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then echo "$dir"; return 0; fi
  done
  return 1
}

install_postgres() {
  [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed and installing it needs root"
  # Debian's postinst would create and start a 'main' cluster on 5432; we run our own instead.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/contactsync.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
    || die "apt-get install postgresql failed"
}

# Run a command as the cluster's owner: `postgres` when we are root (initdb refuses root).
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

is_running() { [[ -f $DATA/PG_VERSION ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

current_port() { sed -n "s/^port = \([0-9]*\)$/\1/p" "$PORT_CONF" 2>/dev/null || true; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

BIN=$(find_bin) || {
  [[ $action == stop ]] && exit 0  # nothing installed, so nothing runs
  install_postgres
  BIN=$(find_bin) || die "no initdb/pg_ctl under $PG_BIN_GLOB after installing postgresql"
}

if [[ $action == stop ]]; then
  if is_running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; fi
  exit 0
fi

if [[ $(id -u) == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
fi

mkdir -p "$DIR"
if [[ $(id -u) == 0 ]]; then chown postgres: "$DIR"; fi
as_owner test -w "$DIR" || die "$DIR is not writable by postgres (check its parent directories too)"

if [[ ! -f $DATA/PG_VERSION ]]; then
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale \
    >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  as_owner mkdir -p "$SOCKET"
  # Password-less logins over the socket and loopback only (tests, never production).
  as_owner tee "$DATA/pg_hba.conf" >/dev/null <<HBA
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
HBA
  as_owner tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKET'
fsync = off
synchronous_commit = off
full_page_writes = off
include_if_exists = 'contactsync.conf'
CONF
fi

if ! is_running; then
  started=""
  port=$(current_port)  # keep the last port when it is still free, so the URL stays the same
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if [[ -z $port ]] || port_in_use "$port"; then port=$(( 20000 + RANDOM % 40000 )); fi
    port_in_use "$port" && { port=""; continue; }
    echo "port = $port" | as_owner tee "$PORT_CONF" >/dev/null
    log_lines=$( { cat "$LOG" 2>/dev/null || true; } | wc -l)
    if as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null 2>&1; then
      started=yes; break
    fi
    # Lost a race for the port, or a stale pid file: look at the log before trying another port.
    tail -n "+$((log_lines + 1))" "$LOG" 2>/dev/null \
      | grep -q "could not bind\|Address already in use" || break
    port=""
  done
  [[ -n $started ]] || { tail -n 20 "$LOG" >&2 || true; die "could not start PostgreSQL"; }
fi

PORT=$(current_port)
[[ -n $PORT ]] || die "no port recorded in $PORT_CONF"
for _ in $(seq 1 60); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres && break
  sleep 0.5
done
"$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres || die "PostgreSQL does not answer on $PORT"

psql_q() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc "$1"; }
if [[ -z $(psql_q "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
  psql_q "CREATE DATABASE $DB_NAME" >/dev/null
fi

echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB_NAME"
