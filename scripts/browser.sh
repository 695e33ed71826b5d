#!/usr/bin/env bash
# Headless Chromium for the live chat widget's browser test (tests/livechat/widget_test.mjs):
# Debian's chromium package, and playwright-core from npm to drive it over CDP (the driver
# only: it never downloads a browser of its own). playwright-core is pinned to the release
# built against the same Chromium major as Debian's (1.64 <-> Chromium 156). Idempotent:
# prints nothing when both are there, a `==>` line for each thing it installs.
#   OMNIGATE_CACHE (default ~/.cache/omnigate): playwright-core goes to $OMNIGATE_CACHE/node.
# Then:
#   NODE_PATH=${OMNIGATE_CACHE:-$HOME/.cache/omnigate}/node/node_modules \
#     node tests/livechat/widget_test.mjs --url http://127.0.0.1:PORT/livechat/CHANNEL/demo ...
set -euo pipefail
playwright_version=1.64.1
prefix=${OMNIGATE_CACHE:-$HOME/.cache/omnigate}/node
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

apt_install() {
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >/dev/null 2>&1 || {
    $sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      --no-install-recommends "$@" >/dev/null
  }
}

if [ ! -x /usr/bin/chromium ]; then
  echo "==> Installing Chromium from Debian's packages"
  apt_install chromium fonts-dejavu-core
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "==> Installing Node.js and npm from Debian's packages"
  apt_install nodejs npm
fi

installed=$(node -p "require('$prefix/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$playwright_version" ]; then
  echo "==> Installing playwright-core $playwright_version into $prefix"
  mkdir -p "$prefix"
  # The driver only; nothing to download at install time.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$prefix" --no-audit --no-fund \
    --loglevel=error --save-exact "playwright-core@$playwright_version" >/dev/null
fi
