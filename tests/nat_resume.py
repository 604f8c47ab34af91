#!/usr/bin/env python3
"""Connections that survive tunnel outages, through a real NAT (network
namespaces from tests/netns_lib.sh; only RFC 5737 addresses).

    pub  (203.0.113.10)              proxy_public; this script's clients
    rtr  (203.0.113.2 / 192.0.2.1)   masquerades home -> pub
    home (192.0.2.2)                 proxy_private and an echo app

An interactive-style session (one line at a time, each echoed) and a 64 MiB
checksummed transfer (sent at a few MiB/s so that it spans the outages) run
through the tunnel while the link breaks the ways home links break:
  1. a silent cut of 20 s (nft drops the tunnel's packets in the router, no
     RST, no ICMP; longer than the 15 s rule), then restored;
  2. a flush of the router's connection tracking (conntrack -F);
  3. the tunnel's TCP connection killed in the home namespace (ss -K);
  4. the home's public address changes (the router's SNAT moves from
     203.0.113.2 to 203.0.113.3, as after a DSL reconnect).
After each, the session keeps working (lines typed during an outage arrive),
and at the end the transfer's checksum is right and no app connection was
ever closed. Needs root, ip, nft, conntrack and ss; without root it prints
SKIPPED and exits 0.
Environment: BIN_DIR (default: repo top), PROXY_EXTRA_ARGS (both programs).
"""
import hashlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from nat_lib import Nat, log_of

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN_DIR = os.environ.get("BIN_DIR") or REPO
EXTRA = shlex.split(os.environ.get("PROXY_EXTRA_ARGS", ""))
NAT = Nat("rs", "nat_resume")
ID, NS, OUT = NAT.id, NAT.ns, NAT.out
step, fail, sh, run_in, spawn, wait_log, cleanup, enter = (
    NAT.step, NAT.fail, NAT.sh, NAT.run_in, NAT.spawn, NAT.wait_log, NAT.cleanup, NAT.enter)
TUNNEL, WEB, APP, ECHO = 6320, 6321, 8082, 8002
TOKEN = os.urandom(16).hex()
BULK = 64 << 20


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise OSError("end of stream after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


class Session:
    def __init__(self):
        self.sock = socket.create_connection(("203.0.113.10", APP), timeout=120)
        self.n = 0

    def roundtrip(self):
        self.n += 1
        line = b"line %d %s\n" % (self.n, os.urandom(6).hex().encode())
        self.sock.sendall(line)
        return recv_exact(self.sock, len(line)) == line


class Bulk:
    """BULK bytes to the echo app at about rate bytes/s, read back, sha256."""

    def __init__(self, rate):
        self.data = os.urandom(BULK)
        self.rate = rate
        self.sock = socket.create_connection(("203.0.113.10", APP), timeout=180)
        self.result = None
        self.got = 0
        threading.Thread(target=self._send, daemon=True).start()
        self.reader = threading.Thread(target=self._recv, daemon=True)
        self.reader.start()

    def _send(self):
        start = time.monotonic()
        sent = 0
        try:
            while sent < BULK:
                n = min(256 << 10, BULK - sent)
                self.sock.sendall(self.data[sent:sent + n])
                sent += n
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as e:
            self.result = "send failed after %d bytes: %r" % (sent, e)

    def _recv(self):
        h = hashlib.sha256()
        try:
            while self.got < BULK:
                d = self.sock.recv(1 << 20)
                if not d:
                    break
                h.update(d)
                self.got += len(d)
            want = hashlib.sha256(self.data).hexdigest()
            self.result = self.result or ("ok" if self.got == BULK and h.hexdigest() == want
                                          else "wrong: %d of %d bytes" % (self.got, BULK))
        except OSError as e:
            self.result = self.result or "recv failed after %d bytes: %r" % (self.got, e)


def main():
    if os.geteuid() != 0:
        print("SKIPPED: nat_resume needs root (network namespaces, nft)")
        return 0
    for tool in ("ip", "nft", "conntrack", "ss"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            print("SKIPPED: nat_resume needs %s (sh tools/deps.sh nat)" % tool)
            return 0
    os.makedirs(OUT, exist_ok=True)
    state = "/tmp/%s-state" % ID
    try:
        step("namespaces %s" % " ".join(NS.values()))
        sh("netns_make_nat")
        echo = spawn("home", "echo", [sys.executable, os.path.join(HERE, "soak", "echo_server.py"),
                                      "--host", "192.0.2.2", "--port", str(ECHO)])
        wait_log(echo, r"port=", 20, what="the echo app")
        pub = spawn("pub", "public", [os.path.join(BIN_DIR, "proxy_public"), str(TUNNEL), str(WEB),
                                      "--bind", "203.0.113.10", "--token", TOKEN, "--state-dir",
                                      state, "--log-level", "debug"] + EXTRA)
        wait_log(pub, r"ev=ready", 20, what="proxy_public ready")
        priv = spawn("home", "private", [
            os.path.join(BIN_DIR, "proxy_private"), "203.0.113.10", str(TUNNEL), "--token", TOKEN,
            "--name", "home", "--register", "e:%d:192.0.2.2:%d" % (APP, ECHO),
            "--known-hosts", "/tmp/%s-known_hosts" % ID, "--log-level", "debug"] + EXTRA)
        wait_log(pub, r"ev=tunnel_up name=home client=203\.0\.113\.2:", 30, what="the tunnel up")
        enter("pub")
        time.sleep(0.5)
        session = Session()
        if not session.roundtrip():
            fail("the session does not echo")
        bulk = Bulk(rate=1 << 20)
        step("session and a %d MiB transfer (1 MiB/s) running" % (BULK >> 20))
        time.sleep(2)

        # 1. silent cut
        mark = len(log_of(priv))
        step("1. silent cut: the router drops the tunnel's packets for 20 s")
        for d in ("dport", "sport"):
            run_in("rtr", ["nft", "insert", "rule", "ip", "filter", "forward", "tcp", d,
                           str(TUNNEL), "drop"])
        typed = b"typed during the cut\n"
        session.sock.sendall(typed)
        time.sleep(20)
        got_before = bulk.got
        for h in run_in("rtr", ["nft", "-a", "list", "chain", "ip", "filter", "forward"]).split("\n"):
            if "tcp" in h and str(TUNNEL) in h and "drop" in h:
                run_in("rtr", ["nft", "delete", "rule", "ip", "filter", "forward", "handle",
                               h.rsplit("handle", 1)[1].strip()])
        step("   restored (the transfer had %d MiB back)" % (got_before >> 20))
        wait_log(priv, r"ev=tunnel_resumed_link", 60, mark, "a resume after the cut")
        if recv_exact(session.sock, len(typed)) != typed or not session.roundtrip():
            fail("the session did not survive the silent cut")
        step("   resumed; the line typed during the cut arrived")

        # 2. conntrack flush
        mark = len(log_of(priv))
        step("2. conntrack -F in the router")
        run_in("rtr", ["conntrack", "-F"], check=False)
        # The next packets find no mapping: either side's next write breaks.
        time.sleep(0.5)
        if not session.roundtrip():
            fail("the session broke at the conntrack flush")
        # Whatever happened (a reset, or a flow that went on) the session works.
        step("   the session works after the flush")

        # 3. ss -K
        mark = len(log_of(priv))
        t0 = time.monotonic()
        step("3. ss -K: the tunnel's TCP connection killed at home")
        run_in("home", ["ss", "-K", "dst", "203.0.113.10", "dport", "=", ":%d" % TUNNEL])
        wait_log(priv, r"ev=tunnel_resumed_link", 30, mark, "a resume after ss -K")
        step("   resumed after %.1f s" % (time.monotonic() - t0))
        if not session.roundtrip():
            fail("the session did not survive ss -K")

        # 4. new public address of the home
        mark = len(log_of(priv))
        step("4. the home's public address changes to 203.0.113.3")
        run_in("rtr", ["ip", "addr", "add", "203.0.113.3/24", "dev", "vrw"])
        run_in("rtr", ["nft", "flush", "chain", "ip", "nat", "postrouting"])
        run_in("rtr", ["nft", "add", "rule", "ip", "nat", "postrouting", "oifname", "vrw", "snat",
                       "to", "203.0.113.3"])
        run_in("rtr", ["conntrack", "-F"], check=False)
        session.sock.sendall(b"x\n")  # something to send: the old mapping is gone
        if recv_exact(session.sock, 2) != b"x\n":
            fail("the session lost a line at the address change")
        wait_log(pub, r"ev=tunnel_resume_accepted name=home client=203\.0\.113\.3:", 60,
                 what="a resume from the new address")
        if not session.roundtrip():
            fail("the session did not survive the address change")
        step("   resumed from 203.0.113.3")

        bulk.reader.join(240)
        if bulk.result != "ok":
            fail("the transfer: %s" % bulk.result)
        step("the %d MiB transfer completed with the right checksum" % (BULK >> 20))
        if not session.roundtrip():
            fail("the session at the end")
        for p, what in ((pub, "public"), (priv, "private")):
            text = log_of(p)
            if "ev=tunnel_down" in text:
                fail("%s logged tunnel_down: a session ended" % what)
        print("PASS: nat_resume (silent cut 20 s, conntrack flush, ss -K, new address: "
              "session and transfer intact)")
        return 0
    finally:
        cleanup()
        subprocess.run(["rm", "-rf", state, "/tmp/%s-known_hosts" % ID])


if __name__ == "__main__":
    sys.exit(main())
