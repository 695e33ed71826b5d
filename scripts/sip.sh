#!/usr/bin/env bash
# Real SIP for the voice tests: Debian's Kamailio 5.6 as registrar and proxy on loopback,
# whose dialog and transaction events post Zammad-style CTI requests to Omnigate, and
# baresip as the user agents that tests/voice/sip_call.py drives.
#   scripts/sip.sh install                  install Kamailio (+ http_client) and baresip,
#                                           idempotent; about 20 s the first time
#   scripts/sip.sh start PORT CTI_URL LOGDIR  run a private Kamailio on udp 127.0.0.1:PORT
#                                           posting to CTI_URL (the full
#                                           .../webhooks/cti/{channel}/{token} URL); config,
#                                           log (kamailio.log) and pid file go in LOGDIR;
#                                           restarts one already running from LOGDIR
#   scripts/sip.sh stop LOGDIR              stop the Kamailio started with that LOGDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cfg_template="$here/../tests/voice/kamailio.cfg"
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

usage() {
  echo "usage: $0 install | start PORT CTI_URL LOGDIR | stop LOGDIR" >&2
  exit 2
}

kamailio_modules() { { kamailio -h 2>/dev/null || true; } | sed -n 's/.*Modules search path (default: \(.*\))$/\1/p'; }

installed() {
  command -v kamailio >/dev/null 2>&1 && command -v baresip >/dev/null 2>&1 || return 1
  local mods
  mods=$(kamailio_modules)
  [ -n "$mods" ] && [ -f "$mods/http_client.so" ] && [ -f "$mods/dialog.so" ] &&
    [ -f /usr/lib/baresip/modules/ctrl_tcp.so ]
}

install() {
  installed && return 0
  echo "==> Installing Kamailio and baresip from Debian's packages"
  # kamailio holds tm, dialog, rr, registrar, usrloc...; kamailio-utils-modules holds
  # http_client; baresip-core is the user agent without the GUI and video extras.
  local pkgs="kamailio kamailio-utils-modules baresip-core"
  local apt="$sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
  # shellcheck disable=SC2086
  $apt install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 || {
    $apt update -qq >/dev/null
    $apt install -y -qq --no-install-recommends $pkgs >/dev/null
  }
  # The package's own service would listen on 0.0.0.0:5060 with /etc/kamailio's config;
  # the tests run their own instance, so keep that one off.
  if [ -d /run/systemd/system ]; then
    $sudo_cmd systemctl disable --now kamailio >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/kamailio ]; then
    $sudo_cmd /etc/init.d/kamailio stop >/dev/null 2>&1 || true
  fi
  installed || { echo "Kamailio or baresip is still missing after installing $pkgs" >&2; exit 1; }
}

running_pid() { # LOGDIR -> pid of the Kamailio running from there, if any
  local pidfile="$1/kamailio.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q kamailio &&
    echo "$pid"
}

stop() {
  local logdir=$1 pid
  if pid=$(running_pid "$logdir"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      # Still there: its process group holds its worker children too (started by setsid).
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$logdir/kamailio.pid"
}

udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q "127.0.0.1:$1"; }

start() {
  local port=$1 url=$2 logdir=$3
  case $port in '' | *[!0-9]*) echo "PORT must be a number, not '$port'" >&2; exit 2 ;; esac
  case $url in http://* | https://*) ;; *) echo "CTI_URL must be an http(s) URL, not '$url'" >&2; exit 2 ;; esac
  # The URL lands in a quoted config string where '$' would start a Kamailio variable.
  case $url in *[\$\"\\\ ]*) echo "CTI_URL must not contain \$, \", backslashes or spaces: '$url'" >&2; exit 2 ;; esac
  installed || install
  mkdir -p "$logdir"
  logdir=$(cd "$logdir" && pwd)
  stop "$logdir"
  if udp_bound "$port"; then
    echo "udp 127.0.0.1:$port is already in use; pick another PORT" >&2
    exit 1
  fi
  # '|' and '&' are special to sed's replacement; escape them (and backslashes) in the URL.
  local url_sed
  url_sed=$(printf '%s' "$url" | sed -e 's/[\\|&]/\\&/g')
  sed -e "s|@PORT@|$port|g" -e "s|@CTI_URL@|$url_sed|g" "$cfg_template" >"$logdir/kamailio.cfg"
  mkdir -p "$logdir/run"
  if ! kamailio -c -f "$logdir/kamailio.cfg" >"$logdir/kamailio-check.log" 2>&1; then
    echo "Kamailio rejects $logdir/kamailio.cfg:" >&2
    grep -E 'ERROR|CRITICAL' "$logdir/kamailio-check.log" >&2 || tail -20 "$logdir/kamailio-check.log" >&2
    exit 1
  fi
  echo "==> Starting Kamailio on udp 127.0.0.1:$port (log in $logdir/kamailio.log)"
  # -DD: stay in the foreground (we background it) and log to stderr (-E), so the log is
  # a plain file; -Y keeps its runtime files out of /run/kamailio, which the system
  # service owns; small memory pools suit a handful of test calls.
  # libcurl (http_client) would send the CTI posts through an http_proxy from the
  # environment; they go to a local URL, so drop any.
  setsid env -u http_proxy -u HTTP_PROXY -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    kamailio -f "$logdir/kamailio.cfg" -P "$logdir/kamailio.pid" -Y "$logdir/run" \
    -w "$logdir" -E -DD -m 64 -M 8 </dev/null >"$logdir/kamailio.log" 2>&1 &
  for _ in $(seq 1 100); do
    if running_pid "$logdir" >/dev/null && udp_bound "$port"; then
      exit 0
    fi
    sleep 0.1
  done
  echo "Kamailio did not come up on udp 127.0.0.1:$port; see $logdir/kamailio.log" >&2
  tail -20 "$logdir/kamailio.log" >&2 || true
  exit 1
}

case ${1:-} in
  install) [ $# -eq 1 ] || usage; install ;;
  start) [ $# -eq 4 ] || usage; start "$2" "$3" "$4" ;;
  stop) [ $# -eq 2 ] || usage; [ -d "$2" ] || exit 0; stop "$(cd "$2" && pwd)" ;;
  *) usage ;;
esac
