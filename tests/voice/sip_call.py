#!/usr/bin/env python3
"""Place one real SIP call between two baresip user agents through a SIP proxy.

    sip_call.py --proxy 127.0.0.1:PORT --scenario answered|busy|cancel|noanswer

The callee (default +15550100200) registers with the proxy (scripts/sip.sh runs
Kamailio with tests/voice/kamailio.cfg), the caller (default +15550001111) dials it,
and the two UAs are driven through baresip's ctrl_tcp JSON interface:

    answered  callee answers (200), caller hangs up after a moment (BYE)
    busy      callee rejects the ringing call (baresip answers 486)
    cancel    caller hangs up while it rings (CANCEL; the callee answers 487)
    noanswer  nobody answers; the proxy's fr_inv_timer (3 s in kamailio.cfg) ends
              the call with 408 to the caller and CANCELs the callee

Exits 0 when the SIP exchange went as expected and prints the call's SIP Call-ID
as the last line of stdout; exits 1 with the reason on stderr otherwise (the UAs'
configs and logs are kept then, and their folder is named). Needs only the standard
library and baresip (scripts/sip.sh install).
"""
import argparse
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BARESIP_MODULES = "/usr/lib/baresip/modules"
SCENARIOS = ("answered", "busy", "cancel", "noanswer")


class Failure(Exception):
    pass


def die_with_parent():
    """In the child before exec: ask Linux for SIGTERM when this script's process ends."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def on_sigterm(_signum, _frame):
    # Unwind through the finally blocks, which stop the UAs.
    raise KeyboardInterrupt


def free_sip_port():
    """A port free for UDP and TCP, with the next one free for TCP too: baresip
    listens on udp+tcp PORT and on tcp PORT+1 (TLS) for sip_listen PORT."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            if port >= 65535:
                continue
            try:
                for p in (port, port + 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                        t.bind(("127.0.0.1", p))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u2:
                    u2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise Failure("no free local port for a SIP user agent")


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        return t.getsockname()[1]


class UserAgent:
    """One baresip process with one account, controlled over ctrl_tcp (netstrings of
    JSON: commands and responses, plus every UA event)."""

    def __init__(self, name, number, proxy, workdir, register, lifetime, verbose):
        self.name, self.number, self.verbose = name, number, verbose
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.sip_port, self.ctrl_port = free_sip_port(), free_tcp_port()
        self.events, self.buf, self.sock, self.token = [], b"", None, 0
        # The AOR's host is the proxy, so REGISTER and INVITE go straight to it.
        self.aor = f"sip:{number}@{proxy}"
        regint = 600 if register else 0
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write(f"<{self.aor}>;regint={regint};answermode=manual;audio_codecs=PCMU\n")
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write(
                f"""# baresip {name}: written by sip_call.py
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{self.sip_port}
# Keep SIP and SDP on loopback, whatever the default interface is.
net_interface\t\t127.0.0.1
call_local_timeout\t30
call_max_calls\t\t4
# No sound devices here: a 440 Hz sine is the microphone (ausine only does
# 48 kHz stereo, baresip resamples) and aubridge swallows what is played.
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
audio_player\t\taubridge,{name}
audio_alert\t\taubridge,{name}-alert
module_path\t\t{BARESIP_MODULES}
module\t\t\tg711.so
module\t\t\tausine.so
module\t\t\taubridge.so
module_tmp\t\taccount.so
# menu provides the dial/accept/hangup/reginfo/quit commands ctrl_tcp relays.
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{self.ctrl_port}
"""
            )
        open(os.path.join(self.dir, "contacts"), "w").close()
        self.log_path = os.path.join(self.dir, "baresip.log")
        self.log = open(self.log_path, "wb")
        # -t: baresip quits by itself after that long, and it gets SIGTERM if this
        # script dies, so no UA outlives a killed test.
        self.proc = subprocess.Popen(
            ["baresip", "-f", self.dir, "-t", str(int(lifetime) + 1)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def say(self, msg):
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {self.name}: {msg}", file=sys.stderr)

    def connect(self, deadline):
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name}'s baresip exited ({self.proc.returncode}); see {self.log_path}")
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                self.sock.setblocking(False)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise Failure(f"{self.name}'s baresip does not take control connections; see {self.log_path}")
                time.sleep(0.05)

    def _read(self, timeout):
        """Read what is there (waiting up to timeout) and file whole messages."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if ready:
            data = self.sock.recv(65536)
            if not data:
                raise Failure(f"{self.name}'s baresip closed the control connection; see {self.log_path}")
            self.buf += data
        out = []
        while b":" in self.buf:
            size, rest = self.buf.split(b":", 1)
            n = int(size)
            if len(rest) < n + 1:
                break
            msg = json.loads(rest[:n].decode("utf-8", "replace"))
            self.buf = rest[n + 1:]
            if msg.get("event"):
                self.say(f"event {msg.get('type')} {msg.get('param', '')}")
                self.events.append(msg)
            out.append(msg)
        return out

    def command(self, command, params=None, deadline=None):
        self.token += 1
        token = f"{self.name}-{self.token}"
        msg = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        data = json.dumps(msg).encode()
        self.say(f"command {command} {params or ''}")
        self.sock.sendall(str(len(data)).encode() + b":" + data + b",")
        deadline = deadline or time.monotonic() + 3
        while time.monotonic() < deadline:
            for m in self._read(deadline - time.monotonic()):
                if m.get("response") and m.get("token") == token:
                    if not m.get("ok"):
                        raise Failure(f"{self.name}: command '{command}' failed: {m.get('data')}")
                    return m.get("data") or ""
        raise Failure(f"{self.name}: no answer to command '{command}'")

    def pump(self, timeout):
        self._read(timeout)

    def find(self, kind, call_id=None):
        for e in self.events:
            if e.get("type") == kind and (call_id is None or e.get("id") == call_id):
                return e
        return None

    def wait(self, kind, deadline, what, call_id=None):
        while True:
            e = self.find(kind, call_id)
            if e:
                return e
            if self.proc.poll() is not None:
                raise Failure(f"{self.name}'s baresip exited while waiting for {what}; see {self.log_path}")
            left = deadline - time.monotonic()
            if left <= 0:
                seen = ", ".join(f"{e.get('type')}({e.get('param', '')})" for e in self.events
                                 if e.get("class") == "call") or "none"
                raise Failure(f"{self.name}: timed out waiting for {what}; its call events: {seen}")
            self._read(min(left, 0.2))

    def wait_registered(self, deadline):
        while True:
            info = re.sub(r"\x1b\[[0-9;]*m", "", self.command("reginfo"))
            if re.search(r"\bOK\b", info):
                return
            if time.monotonic() > deadline:
                raise Failure(f"{self.name} did not register with the proxy: {info.strip()}")
            time.sleep(0.1)

    def close(self):
        """Quit politely (the callee unregisters), then make sure the process is gone."""
        if self.proc.poll() is None and self.sock is not None:
            try:
                self.command("quit", deadline=time.monotonic() + 1)
            except (Failure, OSError):
                pass
        for sig, wait in ((None, 2.0), (signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
            if sig is not None and self.proc.poll() is None:
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.sock is not None:
            self.sock.close()
        self.log.close()


def closed_code(event):
    """The SIP status code at the start of a CALL_CLOSED reason (e.g. '486 Rejected')."""
    m = re.match(r"\s*(\d{3})\b", (event or {}).get("param", ""))
    return int(m.group(1)) if m else None


def run(args, workdir):
    start = time.monotonic()
    deadline = start + args.timeout
    lifetime = args.timeout + 5
    callee = UserAgent("callee", args.callee, args.proxy, workdir, True, lifetime, args.verbose)
    caller = UserAgent("caller", args.caller, args.proxy, workdir, False, lifetime, args.verbose)
    uas = (callee, caller)
    try:
        for ua in uas:
            ua.connect(min(deadline, time.monotonic() + 5))
        callee.wait_registered(min(deadline, time.monotonic() + 5))

        target = f"sip:{args.callee}@{args.proxy}"
        caller.command("dial", target)
        incoming = callee.wait("CALL_INCOMING", min(deadline, time.monotonic() + 5),
                               f"the INVITE to {target}")
        call_id = incoming.get("id")
        if not call_id:
            raise Failure("baresip reported no Call-ID for the incoming call")
        caller.wait("CALL_RINGING", min(deadline, time.monotonic() + 3), "180 Ringing", call_id)

        if args.scenario == "answered":
            callee.command("accept")
            caller.wait("CALL_ESTABLISHED", min(deadline, time.monotonic() + 3), "200 OK", call_id)
            callee.wait("CALL_ESTABLISHED", min(deadline, time.monotonic() + 3), "the ACK", call_id)
            # Talk for a moment (RTP flows both ways), then the caller sends BYE.
            end = time.monotonic() + args.talk
            while time.monotonic() < end:
                for ua in uas:
                    ua.pump(0.05)
            caller.command("hangup")
            closed = callee.wait("CALL_CLOSED", min(deadline, time.monotonic() + 3), "the BYE", call_id)
            outcome = f"answered, then the caller hung up (callee: {closed.get('param')})"

        elif args.scenario == "busy":
            callee.command("hangup")  # baresip rejects a ringing call with 486
            closed = caller.wait("CALL_CLOSED", min(deadline, time.monotonic() + 3), "the 486", call_id)
            if closed_code(closed) != 486:
                raise Failure(f"caller's call ended with '{closed.get('param')}', not 486")
            outcome = f"callee busy (caller got '{closed.get('param')}')"

        elif args.scenario == "cancel":
            caller.command("hangup")  # baresip CANCELs a call still ringing
            closed = callee.wait("CALL_CLOSED", min(deadline, time.monotonic() + 3), "the CANCEL", call_id)
            if callee.find("CALL_ESTABLISHED", call_id):
                raise Failure("the call was answered before the CANCEL")
            outcome = f"caller cancelled while ringing (callee: {closed.get('param')})"

        else:  # noanswer
            closed = caller.wait("CALL_CLOSED", min(deadline, time.monotonic() + args.ring_timeout + 3),
                                 "the proxy's 408 after its ringing timeout", call_id)
            if closed_code(closed) not in (408, 480):
                raise Failure(f"caller's call ended with '{closed.get('param')}', not 408/480")
            callee.wait("CALL_CLOSED", min(deadline, time.monotonic() + 3), "the proxy's CANCEL", call_id)
            outcome = f"nobody answered (caller got '{closed.get('param')}')"

        # Let the last transaction finish (ACK to 486/487/408, 200 to BYE) before quitting.
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            for ua in uas:
                ua.pump(0.05)
        return call_id, outcome, time.monotonic() - start
    finally:
        for ua in uas:
            ua.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxy", required=True, help="HOST:PORT of the SIP proxy (UDP)")
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--caller", default="+15550001111", help="caller's number (SIP user part)")
    p.add_argument("--callee", default="+15550100200", help="callee's number (SIP user part)")
    p.add_argument("--talk", type=float, default=0.5, help="seconds an answered call lasts")
    p.add_argument("--ring-timeout", type=float, default=3.0,
                   help="the proxy's fr_inv_timer in seconds (noanswer waits for it)")
    p.add_argument("--timeout", type=float, default=15.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the UAs' configs and logs")
    p.add_argument("-v", "--verbose", action="store_true", help="print UA events on stderr")
    args = p.parse_args()
    if not re.fullmatch(r"[^:\s]+:\d+", args.proxy):
        p.error("--proxy must be HOST:PORT")
    if shutil.which("baresip") is None or not os.path.isdir(BARESIP_MODULES):
        print("sip_call.py: baresip is not installed (scripts/sip.sh install)", file=sys.stderr)
        return 1

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = tempfile.mkdtemp(prefix="omnigate-sip-call-")
    try:
        call_id, outcome, took = run(args, workdir)
    except Failure as e:
        print(f"sip_call.py {args.scenario}: FAILED: {e} (UA configs and logs in {workdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sip_call.py: interrupted (UA logs in {workdir})", file=sys.stderr)
        return 130
    if args.keep:
        print(f"UA configs and logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.scenario}: {outcome} in {took:.1f} s")
    print(call_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
