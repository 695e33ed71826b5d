#!/usr/bin/env bash
# Installs what building and testing Omnigate needs, once: Debian packages (mold for
# fast links, protoc for the event schema, Java and Maven for Apache Kafka) and the
# Kafka broker itself, resolved from Maven Central (scripts/kafka.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in mold:mold protoc:protobuf-compiler java:openjdk-17-jre-headless mvn:maven curl:curl; do
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

scripts/kafka.sh install
