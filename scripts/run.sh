#!/usr/bin/env bash
# `make run`: Tansu (SQLite under ./data) and Omnigate with every role, on 127.0.0.1.
# Ctrl-C stops both; data in ./data survives a restart.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin omnigate
mkdir -p data

tansu_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  scripts/tansu.sh sqlite >data/tansu.log 2>&1 &
  tansu_pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
fi
stop() {
  [ -n "${omnigate_pid:-}" ] && kill "$omnigate_pid" 2>/dev/null && wait "$omnigate_pid" 2>/dev/null
  [ -n "$tansu_pid" ] && kill "$tansu_pid" 2>/dev/null && wait "$tansu_pid" 2>/dev/null
  exit 0
}
trap stop INT TERM

target/release/omnigate serve --config config/standalone.toml &
omnigate_pid=$!
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break; sleep 0.2; done

cat <<'MSG'

Omnigate is up on http://127.0.0.1:8080 (Kafka: 127.0.0.1:9092). Try:

  curl -s http://127.0.0.1:8080/readyz
  # a signed WhatsApp webhook on the demo channel (local-only secrets):
  body='{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Ada"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.demo1","timestamp":"1749416383","type":"text","text":{"body":"Hello!"}}]}}]}]}'
  sig=$(printf %s "$body" | openssl dgst -sha256 -hmac demo-app-secret | sed 's/^.*= //')
  curl -si -X POST http://127.0.0.1:8080/webhooks/whatsapp/demo -H "X-Hub-Signature-256: sha256=$sig" -d "$body"
  # read it back from Kafka:
  tansu cat consume --topic omnigate.inbound.v1 --max-wait-time-ms 2000
  curl -s http://127.0.0.1:8080/metrics | grep omnigate_

Ctrl-C stops Omnigate and Tansu.
MSG
wait "$omnigate_pid"
