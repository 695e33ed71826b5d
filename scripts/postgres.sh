#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (the router's two-instance test uses
# it). The machine normally runs it already; start the local cluster if it does not.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "==> Starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && exit 0
  sleep 0.2
done
echo "PostgreSQL does not answer on 127.0.0.1:5432 (trust auth expected); the router tests need it" >&2
exit 1
