#!/usr/bin/env bash
# Python client libraries the tests drive, in a virtual environment of their own:
# Twilio's request validator, so the signatures the voice endpoint checks are made by
# Twilio's code rather than ours. Idempotent; about 20 s the first time.
#   OMNIGATE_CACHE (default ~/.cache/omnigate): where the environment lives.
set -euo pipefail
venv=${OMNIGATE_CACHE:-$HOME/.cache/omnigate}/venv
if "$venv/bin/python" -c "import twilio.request_validator" 2>/dev/null; then
  exit 0
fi
echo "==> Installing the Python test clients (twilio) into $venv"
if ! python3 -m venv "$venv" 2>/dev/null; then
  # Debian ships venv separately.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "twilio==9.13.0"
