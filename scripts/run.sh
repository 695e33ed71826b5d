#!/usr/bin/env bash
# `make run`: Apache Kafka (data under ./data/kafka) and Omnigate with every role, on
# 127.0.0.1. Ctrl-C stops both; data in ./data survives a restart.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin omnigate
mkdir -p data

kafka_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  # Its own session, so Ctrl-C reaches Omnigate first and Kafka outlives its flush.
  echo "==> Starting Apache Kafka on 127.0.0.1:9092 (data in data/kafka, log in data/kafka.log)"
  setsid scripts/kafka.sh run >data/kafka.log 2>&1 &
  kafka_pid=$!
  for _ in $(seq 1 600); do
    (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
    kill -0 "$kafka_pid" 2>/dev/null || { echo "Kafka did not start; see data/kafka.log" >&2; tail -20 data/kafka.log >&2; exit 1; }
    sleep 0.1
  done
fi
# The demo mail server (Dovecot and Postfix, installed on first run; mail under
# data/mail). It keeps running after Ctrl-C; `scripts/mail.sh stop run` stops it.
scripts/mail.sh run
stop() {
  set +e
  if [ -n "${omnigate_pid:-}" ]; then
    kill -INT "$omnigate_pid" 2>/dev/null
    wait "$omnigate_pid" 2>/dev/null
  fi
  if [ -n "$kafka_pid" ]; then
    kill -- -"$kafka_pid" 2>/dev/null || kill "$kafka_pid" 2>/dev/null
    wait "$kafka_pid" 2>/dev/null
  fi
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
  # the topics, and the event read back from Kafka (then routed):
  target/release/omnigate topics --config config/standalone.toml
  target/release/omnigate tail --config config/standalone.toml inbound.v1
  target/release/omnigate tail --config config/standalone.toml routed.v1
  curl -s http://127.0.0.1:8080/metrics | grep omnigate_
  # outbound webhooks: a local receiver, one endpoint, then post the message again
  target/release/omnigate receive --listen 127.0.0.1:9000 &
  curl -s http://127.0.0.1:8080/v1/webhooks -H 'Authorization: Bearer omnigate-dev-key' \
    -d '{"url": "http://127.0.0.1:9000/", "events": ["message.*"]}'
  # live chat: open the demo page, type, and answer with /v1/messages (see the README)
  #   http://127.0.0.1:8080/livechat/demo-chat/demo
  # email: a customer writes to the demo mailbox (see the README for the reply)
  printf 'From: customer@omnigate.test\r\nTo: support@omnigate.test\r\nSubject: Where is my order?\r\nMessage-ID: <demo-1@omnigate.test>\r\n\r\nHello, order 1234 has not arrived.\r\n' \
    | curl -s smtp://127.0.0.1:2525 --mail-from customer@omnigate.test --mail-rcpt support@omnigate.test -T -

Ctrl-C stops Omnigate and Kafka.
MSG
# Omnigate stops on Ctrl-C (the terminal signals it directly) or on its own; then Kafka.
wait "$omnigate_pid" || true
omnigate_pid=""
stop
