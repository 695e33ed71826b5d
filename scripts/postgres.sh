#!/usr/bin/env bash
# PostgreSQL for the tests on 127.0.0.1:5432 (user postgres, trust auth on loopback).
# Installs Debian's server once if it is missing, keeps a cluster of its own under
# /var/lib/postgresql/omnigate-test, and starts it unless something answers there already.
set -euo pipefail
port=${PGPORT_TEST:-5432}
data=/var/lib/postgresql/omnigate-test
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

usable() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qtAc 'SELECT 1' >/dev/null 2>&1; }

if pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
  if usable; then exit 0; fi
  echo "A PostgreSQL on 127.0.0.1:$port refuses user postgres without a password; the tests need trust auth there (or stop it and rerun)" >&2
  exit 1
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "==> Installing PostgreSQL from Debian's packages"
  $sudo_cmd apt-get install -y postgresql >/dev/null 2>&1 || {
    $sudo_cmd apt-get update >/dev/null
    $sudo_cmd apt-get install -y postgresql >/dev/null
  }
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

as_postgres() { $sudo_cmd runuser -u postgres -- "$@"; }
if [ "$(id -u)" -ne 0 ]; then as_postgres() { sudo -u postgres "$@"; }; fi

if [ ! -f "$data/PG_VERSION" ]; then
  echo "==> Creating the test cluster in $data"
  $sudo_cmd mkdir -p "$data"
  $sudo_cmd chown postgres:postgres "$data"
  as_postgres "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
fi

socket_dir=/tmp/omnigate-postgres
$sudo_cmd mkdir -p "$socket_dir"
$sudo_cmd chown postgres:postgres "$socket_dir"
echo "==> Starting PostgreSQL on 127.0.0.1:$port (log in $data/server.log)"
# Test data only: durability settings off make the many small test databases fast.
as_postgres "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$socket_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null
for _ in $(seq 1 50); do
  usable && exit 0
  sleep 0.2
done
echo "PostgreSQL does not answer on 127.0.0.1:$port; see $data/server.log" >&2
exit 1
