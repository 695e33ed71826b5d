#!/usr/bin/env bash
# Installs what building and testing Omnigate needs, once: Debian packages (mold for
# fast links, protoc for the event schema) and Tansu 0.6.0, the Kafka-compatible broker.
set -euo pipefail

TANSU_VERSION=0.6.0

missing=()
for tool in mold:mold protoc:protobuf-compiler; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> Installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update >/dev/null
    $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null
  }
fi

if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "==> Installing Tansu $TANSU_VERSION (takes about 15 minutes on 2 cores, once)"
  cargo install "tansu@$TANSU_VERSION" --locked --features libsql,dynostore
fi
