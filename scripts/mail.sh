#!/usr/bin/env bash
# A private mail server for the email connector's tests, benchmarks and demo: Dovecot 2.3
# (IMAP with IDLE, and LMTP) and Postfix (SMTP, delivering into Dovecot over LMTP), plain
# text on 127.0.0.1 only. Each mode is an instance of its own (config files generated into
# its state folder, its own ports, logs and runtime folder); the system's dovecot and
# postfix services are left stopped and disabled. Installs Debian's packages once if missing;
# a server already listening on a mode's ports is reused as it is.
#
#   scripts/mail.sh run    IMAP 127.0.0.1:1143, SMTP :2525, LMTP :2424; state under
#                          ./data/mail (kept across restarts). Two users, IMAP login = the
#                          address, password demo-password: support@omnigate.test and
#                          customer@omnigate.test; SMTP accepts only these recipients.
#   scripts/mail.sh test   IMAP 127.0.0.1:11143, SMTP :12525, LMTP :12424; state in
#                          /tmp/omnigate-mail-test, fresh whenever neither server of the mode
#                          runs. Any login NAME@DOMAIN with password test-password has a
#                          mailbox of its own, made on first use; SMTP (no auth, from
#                          127.0.0.1) accepts any recipient and delivers to its INBOX.
#                          XOAUTH2 / OAUTHBEARER: Dovecot POSTs `token=<access token>` to the
#                          introspection URL and wants 200 with JSON
#                          {"active": true, "username": "<the IMAP login>"}.
#                          Submission on :12587 offers SMTP AUTH (PLAIN, XOAUTH2)
#                          through Dovecot's auth service (:12426).
#   scripts/mail.sh bench  IMAP 127.0.0.1:21143, SMTP :22525, LMTP :22424; like test, state
#                          in /tmp/omnigate-mail-bench; sized for 1,000+ concurrent IDLE
#                          sessions from one IP (raises fs.inotify.max_user_instances).
#   scripts/mail.sh stop MODE           stop both servers of MODE (the state is kept)
#   scripts/mail.sh restart-imap MODE   restart only Dovecot (IMAP and LMTP): open IMAP
#                                       sessions are dropped, mail then arrives again
#   scripts/mail.sh stop-imap MODE      stop only Dovecot; `scripts/mail.sh MODE` starts it
#                                       again (Postfix keeps the mail queued meanwhile and
#                                       retries every second)
#   scripts/mail.sh doveadm MODE ARGS   doveadm against MODE's Dovecot (which must run)
#   scripts/mail.sh status MODE         which of MODE's servers listen
#
# A UIDVALIDITY change (what a server does after its index is rebuilt): either
#   scripts/mail.sh doveadm test mailbox update -u USER --uid-validity N INBOX
# (any N other than the current one, e.g. `date +%s`; the mails keep their UIDs), or
# recreate a folder with the same mails (new UIDVALIDITY, UIDs renumbered from 1; not for
# INBOX; no '.' in folder names, Maildir++ keeps folders as .Name):
#   scripts/mail.sh doveadm test mailbox rename -u USER Box Box-old
#   scripts/mail.sh doveadm test mailbox create -u USER Box
#   scripts/mail.sh doveadm test move -u USER Box mailbox Box-old all
#   scripts/mail.sh doveadm test mailbox delete -u USER Box-old
# Read it back: scripts/mail.sh doveadm test mailbox status -u USER uidvalidity INBOX.
# A session that has the mailbox selected is not told at once, even in IDLE: at its next
# command or the next delivery Dovecot sends `* BYE IMAP session state is inconsistent,
# please relogin.` and closes it; SELECT after a new login shows the new UIDVALIDITY.
#
# Mail to user+tag@domain goes to user@domain. A failed login is answered after 0.5 s.
# Logs: STATE/dovecot.log and STATE/postfix.log (STATE = ./data/mail for run).
# Environment: MAIL_OAUTH2_INTROSPECTION_URL (default http://127.0.0.1:12480/introspect
# for test, :22480 for bench, :2480 for run; read when Dovecot starts).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() {
  echo "usage: $0 run|test|bench|status MODE|stop MODE|restart-imap MODE|stop-imap MODE|doveadm MODE ARGS..." >&2
  exit 2
}

# Sets the variables of one mode: ports, state folder, runtime folder (sockets; a short
# path under /tmp because a Unix socket path is at most 107 bytes), users.
select_mode() {
  mode=$1
  case "$mode" in
    run) imap_port=1143 smtp_port=2525 lmtp_port=2424 oauth_port=2480 sasl_port=0 submission_port=0
         state=$root/data/mail rundir=/tmp/omnigate-mail-run ;;
    test) imap_port=11143 smtp_port=12525 lmtp_port=12424 oauth_port=12480 sasl_port=12426 submission_port=12587
          state=/tmp/omnigate-mail-test rundir=/tmp/omnigate-mail-test/run ;;
    bench) imap_port=21143 smtp_port=22525 lmtp_port=22424 oauth_port=22480 sasl_port=0 submission_port=0
           state=/tmp/omnigate-mail-bench rundir=/tmp/omnigate-mail-bench/run ;;
    *) usage ;;
  esac
  introspection_url=${MAIL_OAUTH2_INTROSPECTION_URL:-http://127.0.0.1:$oauth_port/introspect}
  dovecot_conf=$state/dovecot/dovecot.conf
  postfix_etc=$state/postfix/etc
  postfix_spool=$state/postfix/spool
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A daemon's master is reparented to init when it starts: once it has exited it may stay
# a zombie for a while, which `kill -0` still finds.
alive() {
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
dovecot_up() { listening "$imap_port" && listening "$lmtp_port"; }
postfix_up() { listening "$smtp_port"; }

install() {
  if command -v dovecot >/dev/null && [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/lmtp ] &&
    command -v postfix >/dev/null; then
    return 0
  fi
  echo "==> Installing Dovecot and Postfix from Debian's packages (once)"
  # "No configuration": the package then writes no /etc/postfix/main.cf and starts nothing.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q -y)
  "${apt[@]}" install --no-install-recommends dovecot-imapd dovecot-lmtpd postfix >/dev/null 2>&1 || {
    "${apt[@]}" update >/dev/null
    "${apt[@]}" install --no-install-recommends dovecot-imapd dovecot-lmtpd postfix >/dev/null
  }
  # The packages' own services (IMAP on 143/993, SMTP on 25) are not ours: off for good.
  local svc
  for svc in dovecot postfix; do
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
}

# Dovecot's configuration for the selected mode (no include of /etc/dovecot: ours alone).
write_dovecot_conf() {
  local mail_uid mail_gid
  mail_uid=$(id -u mail)
  mail_gid=$(id -g mail)
  mkdir -p "$state/dovecot/lib" "$state/mail"
  # Every mailbox belongs to Debian's `mail` user: one uid for all the users of a
  # throwaway server (and root may not own mail in Dovecot).
  chown mail:mail "$state/mail"

  local passdb imap_tuning
  if [ "$mode" = run ]; then
    printf '%s\n' \
      "support@omnigate.test:{PLAIN}demo-password" \
      "customer@omnigate.test:{PLAIN}demo-password" >"$state/dovecot/users"
    # Read by the auth process, which runs as the dovecot user.
    chown root:dovecot "$state/dovecot/users"
    chmod 640 "$state/dovecot/users"
    passdb="passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%Lu $state/dovecot/users
}"
  else
    passdb="passdb {
  driver = static
  mechanisms = plain login
  args = password=test-password
}"
  fi

  if [ "$mode" = bench ]; then
    imap_tuning="# 1,000+ IDLE sessions from one IP. One imap process per session (Dovecot's
# default, client_limit 1); the master, log, anvil and auth services get a client per
# process, so default_client_limit is above the total number of processes.
default_client_limit = 6000
service imap {
  process_limit = 4000
  client_limit = 1
}
# High-performance login: a few long-lived login processes each take many connections
# (service_count = 0) instead of one process per connection.
service imap-login {
  service_count = 0
  process_min_avail = 2
  process_limit = 8
  client_limit = 1000
}
service auth {
  client_limit = 6000
}
service anvil {
  client_limit = 6000
}
protocol imap {
  # Per user and IP; the bench's client is one IP.
  mail_max_userip_connections = 4000
}"
  else
    imap_tuning="protocol imap {
  # Per user and IP (default 10): a test may hold several sessions of one user.
  mail_max_userip_connections = 100
}"
  fi

  # Test mode: Postfix authenticates SMTP clients (PLAIN, XOAUTH2) through Dovecot.
  local sasl_service=""
  if [ "$mode" = test ]; then
    sasl_service="service auth {
  inet_listener sasl {
    address = 127.0.0.1
    port = $sasl_port
  }
}"
  fi

  cat >"$dovecot_conf" <<EOF
# Generated by scripts/mail.sh $mode at each start of Dovecot; edit the script instead.
instance_name = omnigate-mail-$mode
base_dir = $rundir
state_dir = $state/dovecot/lib
log_path = $state/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
# Plain text on loopback only: no TLS, and plaintext logins allowed without it.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_username_format = %Lu
auth_verbose = yes
# Failed logins answer within 0.5 s instead of 2 s, and without the per-IP penalty that
# grows to 15 s (its anvil socket is off, below): tests of rejected credentials stay fast.
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

mail_uid = $mail_uid
mail_gid = $mail_gid
first_valid_uid = $mail_uid
first_valid_gid = $mail_gid
mail_location = maildir:~/Maildir
# Folders in IMAP are separated by '/', on disk Maildir++ keeps them as .Name folders.
namespace inbox {
  inbox = yes
  separator = /
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
}

# Access tokens (XOAUTH2, OAUTHBEARER) are checked by the introspection endpoint; the
# passwords (PLAIN, LOGIN) by the passdb after it.
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $state/dovecot/oauth2.conf.ext
}
$passdb
# LMTP delivers to whoever it is given, making the mailbox on the way (Postfix decides
# which recipients exist; a passdb restricted to login mechanisms cannot answer LMTP's
# user lookups anyway).
userdb {
  driver = static
  args = uid=$mail_uid gid=$mail_gid home=$state/mail/%Ld/%Ln allow_all_users=yes
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp_port
  }
}
$sasl_service
# user+tag@domain is delivered to user@domain's INBOX (LMTP's default delimiter, '+').
$imap_tuning
EOF

  cat >"$state/dovecot/oauth2.conf.ext" <<EOF
# RFC 7662 token introspection: POST token=<access token> to the URL; the JSON answer
# must say "active": true and name the login in "username".
introspection_mode = post
introspection_url = $introspection_url
username_attribute = username
active_attribute = active
active_value = true
# No tokeninfo_url: the introspection answer is the only check.
timeout_msecs = 5000
EOF
}

write_postfix_conf() {
  mkdir -p "$postfix_etc" "$postfix_spool" "$state/postfix/lib"
  chown postfix "$state/postfix/lib"
  local recipient_check="" smtpd_maxproc=100
  if [ "$mode" = run ]; then
    printf '%s\n' "support@omnigate.test OK" "customer@omnigate.test OK" \
      "omnigate.test 550 5.1.1 No such user here" >"$postfix_etc/recipients"
    recipient_check="smtpd_recipient_restrictions = check_recipient_access texthash:$postfix_etc/recipients, reject"
  fi
  [ "$mode" = bench ] && smtpd_maxproc=500
  # Test mode: a second SMTP listener (submission) that offers AUTH through Dovecot, so
  # the OAuth2 test can send with XOAUTH2. It is apart from the main listener because
  # smtpd needs Dovecot's auth service for every session once AUTH is on: a test that
  # restarts Dovecot must not break the other tests' plain SMTP.
  local submission=""
  if [ "$mode" = test ]; then
    submission="127.0.0.1:$submission_port inet n - n - - smtpd -o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=dovecot -o smtpd_sasl_path=inet:127.0.0.1:$sasl_port -o smtpd_sasl_security_options=noanonymous -o smtpd_tls_auth_only=no"
  fi
  cat >"$postfix_etc/main.cf" <<EOF
# Generated by scripts/mail.sh $mode at each start of Postfix; edit the script instead.
compatibility_level = 3.6
queue_directory = $postfix_spool
data_directory = $state/postfix/lib
maillog_file = $state/postfix.log
maillog_file_prefixes = $state
myhostname = mail.omnigate.test
mydomain = omnigate.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# No local delivery and no relaying outside: every recipient goes to Dovecot's LMTP.
mydestination =
local_recipient_maps =
relay_domains =
default_transport = lmtp:inet:127.0.0.1:$lmtp_port
relay_transport = \$default_transport
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
$recipient_check
# user+tag@domain is user@domain (as in Dovecot).
recipient_delimiter = +
# Loopback only: no DNS at all, not even for the client's name.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
lmtp_host_lookup = native
biff = no
message_size_limit = 52428800
smtpd_error_sleep_time = 0
# Retry within a second when Dovecot is down or restarting (a test's restart-imap).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
EOF

  # Debian's master.cf without the chroot (the queue folder is ours) and without the
  # delivery agents nobody uses here; the SMTP listener on our address and port.
  cat >"$postfix_etc/master.cf" <<EOF
# Generated by scripts/mail.sh $mode.
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$smtp_port inet n - n - $smtpd_maxproc smtpd
$submission
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

wait_for() {
  local what=$1 log=$2
  shift 2
  for _ in $(seq 1 100); do
    "$@" && return 0
    sleep 0.1
  done
  echo "$what did not come up for mode $mode; the last lines of $log:" >&2
  tail -20 "$log" >&2 || true
  exit 1
}

start_dovecot() {
  stop_dovecot
  write_dovecot_conf
  # Only sockets and the pid file live there: a stale socket of a listener that is off
  # (anvil-auth-penalty) would be found and refused instead of missing.
  rm -rf "$rundir"
  mkdir -p "$rundir"
  if [ "$mode" = bench ]; then
    # Every IDLE session is a process of the `mail` user with an inotify instance of its
    # own; past the per-user limit (Debian: 128) Dovecot falls back to polling.
    local want=8192
    if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt "$want" ]; then
      sysctl -qw fs.inotify.max_user_instances=$want || {
        echo "Cannot raise fs.inotify.max_user_instances to $want (needs root): IDLE would poll" >&2
        exit 1
      }
    fi
  fi
  # As many open files as allowed: the master holds a few per process it runs.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # Nor the caller's output nor this script's lock (fd 9) may stay open in the daemons:
  # a test harness reading our output would wait for them to exit.
  dovecot -c "$dovecot_conf" </dev/null >>"$state/dovecot.log" 2>&1 9>&- || {
    echo "Dovecot did not start for mode $mode; the last lines of $state/dovecot.log:" >&2
    tail -20 "$state/dovecot.log" >&2 || true
    exit 1
  }
  wait_for Dovecot "$state/dovecot.log" dovecot_up
}

# Whether session SID is this mode's Dovecot: its master, or what is left of its children
# (a stale pid file may name a process that is not ours).
dovecot_session() {
  local args
  args=$(ps -o args= -s "$1" 2>/dev/null) || return 1
  [ -n "$args" ] || return 1
  ! grep -qvE "^(dovecot -c $dovecot_conf|/usr/sbin/dovecot -c $dovecot_conf|dovecot-omnigate-mail-$mode/|\\[)" <<<"$args"
}

stop_dovecot() {
  local pid
  pid=$(cat "$rundir/master.pid" 2>/dev/null) || return 0
  rm -f "$rundir/master.pid"
  dovecot_session "$pid" || return 0
  if kill "$pid" 2>/dev/null; then
    # It waits a second for its log process before it exits.
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
  fi
  # What is left of its session (the master is its leader) holds the listening sockets:
  # processes that still wait on a timeout, or everything if the master hung.
  if dovecot_session "$pid"; then kill -9 -- "-$pid" 2>/dev/null || true; fi
  # Then wait until its listeners are closed.
  for _ in $(seq 1 100); do
    listening "$imap_port" || listening "$lmtp_port" || break
    sleep 0.05
  done
}

start_postfix() {
  stop_postfix
  write_postfix_conf
  postfix -c "$postfix_etc" start </dev/null >>"$state/postfix.log" 2>&1 9>&- || {
    echo "Postfix did not start for mode $mode; the last lines of $state/postfix.log:" >&2
    tail -20 "$state/postfix.log" >&2 || true
    exit 1
  }
  wait_for Postfix "$state/postfix.log" postfix_up
}

stop_postfix() {
  local pid
  pid=$(sed -n '1s/ //gp' "$postfix_spool/pid/master.pid" 2>/dev/null) || return 0
  rm -f "$postfix_spool/pid/master.pid"
  [ -n "$pid" ] || return 0
  # Only this instance's master (a stale pid file may name a process that is not ours).
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "MAIL_CONFIG=$postfix_etc" || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do alive "$pid" || return 0; sleep 0.05; done
  # Past 5 s its whole session goes by force.
  kill -9 -- "-$pid" 2>/dev/null || true
}

start_mode() {
  local need_dovecot=yes need_postfix=yes
  dovecot_up && need_dovecot=no
  postfix_up && need_postfix=no
  [ $need_dovecot = no ] && [ $need_postfix = no ] && return 0
  install
  if [ "$mode" != run ] && [ $need_dovecot = yes ] && [ $need_postfix = yes ]; then
    # Nothing of this mode runs: start from an empty state.
    stop_dovecot
    stop_postfix
    rm -rf "$state"
  fi
  mkdir -p "$state"
  echo "==> Starting the $mode mail server: IMAP 127.0.0.1:$imap_port, SMTP :$smtp_port, LMTP :$lmtp_port (state and logs in $state)"
  [ $need_dovecot = yes ] && start_dovecot
  [ $need_postfix = yes ] && start_postfix
  return 0
}

command=${1:-}
case "$command" in
  run|test|bench) select_mode "$command" ;;
  stop|restart-imap|stop-imap|doveadm|status) [ $# -ge 2 ] || usage; select_mode "$2" ;;
  *) usage ;;
esac

# One invocation per mode at a time (tests may start the server from parallel processes).
exec 9>"/tmp/omnigate-mail-$mode.lock"
flock 9

case "$command" in
  run|test|bench) start_mode ;;
  stop)
    stop_dovecot
    stop_postfix
    ;;
  stop-imap) stop_dovecot ;;
  restart-imap)
    install
    mkdir -p "$state"
    start_dovecot
    ;;
  doveadm)
    shift 2
    flock -u 9
    exec doveadm -c "$dovecot_conf" "$@" 9>&-
    ;;
  status)
    dovecot_up && echo "dovecot: IMAP 127.0.0.1:$imap_port, LMTP 127.0.0.1:$lmtp_port" || echo "dovecot: down"
    postfix_up && echo "postfix: SMTP 127.0.0.1:$smtp_port" || echo "postfix: down"
    ;;
esac
