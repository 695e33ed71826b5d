#!/usr/bin/env bash
# Starts Tansu on 127.0.0.1:9092 unless something already listens there.
#   scripts/tansu.sh memory   in-memory storage, in the background (tests)
#   scripts/tansu.sh sqlite   SQLite under ./data, in the foreground (make run)
#   scripts/tansu.sh bench    a fresh in-memory broker on 127.0.0.1:19092 for `make bench`
#                             (the memory engine slows down as it fills, so benchmarks
#                             never share the long-lived test broker)
set -euo pipefail
mode=${1:-memory}
port=9092

if [ "$mode" = bench ]; then
  port=19092
  mkdir -p .tmp
  if [ -f .tmp/tansu-bench.pid ]; then
    kill "$(cat .tmp/tansu-bench.pid)" 2>/dev/null || true
    sleep 0.5
  fi
  echo "==> Starting a fresh Tansu (memory storage) for benchmarks on 127.0.0.1:$port"
  nohup tansu broker --listener-url "tcp://0.0.0.0:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >.tmp/tansu-bench.log 2>&1 &
  echo $! >.tmp/tansu-bench.pid
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && exit 0; sleep 0.1; done
  echo "Tansu did not start; see .tmp/tansu-bench.log" >&2
  exit 1
fi

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
  *) echo "usage: $0 memory|sqlite|bench" >&2; exit 2 ;;
esac
