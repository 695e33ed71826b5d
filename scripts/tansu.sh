#!/usr/bin/env bash
# Starts Tansu on 127.0.0.1:9092 unless something already listens there.
#   scripts/tansu.sh memory   in-memory storage, in the background (tests)
#   scripts/tansu.sh sqlite   SQLite under ./data, in the foreground (make run)
set -euo pipefail
mode=${1:-memory}
port=9092

listening() { (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; }

if listening; then
  echo "==> A broker already listens on 127.0.0.1:$port; using it"
  exit 0
fi

common=(broker --listener-url "tcp://0.0.0.0:$port" --advertised-listener-url "tcp://127.0.0.1:$port")
case "$mode" in
  memory)
    mkdir -p .tmp
    echo "==> Starting Tansu (memory storage) on 127.0.0.1:$port; log in .tmp/tansu.log"
    nohup tansu "${common[@]}" --storage-engine memory://tansu/ >.tmp/tansu.log 2>&1 &
    for _ in $(seq 1 100); do listening && exit 0; sleep 0.1; done
    echo "Tansu did not start; see .tmp/tansu.log" >&2
    exit 1
    ;;
  sqlite)
    mkdir -p data
    # The path is relative to the working folder (sqlite:///abs does not do what it looks like).
    exec tansu "${common[@]}" --storage-engine sqlite://data/tansu.db
    ;;
  *) echo "usage: $0 memory|sqlite" >&2; exit 2 ;;
esac
