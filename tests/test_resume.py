"""Connections that survive a broken tunnel (protocol version 2, resumption).

The private side reaches the public side through a relay in this test that
can break the tunnel the two ways a home link breaks: a reset of the TCP
connection (as after a carrier NAT flush) or a silent cut (nothing passes,
not even new connections) that is later restored. Every connection through
the tunnel is then suspended, the private side comes back with its session,
and the connections go on byte-exact. The real-NAT variants are in
tests/nat_resume.sh."""
import os
import re
import socket
import struct
import sys
import threading
import time

import harness
from harness import MODE, ProxyTest, SLOW, free_port, recv_exact
from helpers import apps

sys.path.insert(0, os.path.join(harness.HERE, "soak"))
import faultlib  # noqa: E402


class CutRelay:
    """A TCP relay from its port to target's. cut() resets every connection
    through it; stall() lets nothing through (new connections are accepted
    but get no answer) until restore()."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.links = []
        self.lock = threading.Lock()
        self.open = threading.Event()
        self.open.set()
        self.accepted = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._link, args=(a,), daemon=True).start()

    def _link(self, a):
        self.open.wait()
        try:
            b = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            a.close()
            return
        b.settimeout(None)
        with self.lock:
            gen = self.cuts
            pumps = [threading.Thread(target=self._pump, args=(a, b, gen), daemon=True),
                     threading.Thread(target=self._pump, args=(b, a, gen), daemon=True)]
            self.links.append((a, b, pumps))
            self.accepted += 1
            for t in pumps:
                t.start()

    def _pump(self, src, dst, cuts):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    # An end passes on, but not one that cut() made: that
                    # one is a reset on both sides.
                    with self.lock:
                        if cuts == self.cuts:
                            dst.shutdown(socket.SHUT_WR)
                    return
                while not self.open.wait(0.1):
                    if cuts != self.cuts:
                        return
                if cuts != self.cuts:
                    return
                dst.sendall(data)
        except OSError:
            pass

    def cut(self):
        with self.lock:
            self.cuts += 1
            links, self.links = self.links, []
        for a, b, pumps in links:
            for s in (a, b):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    # Wake the pumps blocked in recv(); a socket is only
                    # released, and the RST sent, when no pump uses it, so
                    # they are waited for before the close.
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            for t in pumps:
                t.join(5)
            for s in (a, b):
                s.close()

    def stall(self):
        self.open.clear()

    def restore(self):
        self.open.set()

    def close(self):
        self.restore()
        self.sock.close()
        self.cut()


class LineEcho:
    """An interactive-style session: one line at a time, each answered."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60 * SLOW)
        self.n = 0

    def roundtrip(self):
        self.n += 1
        line = b"line %d %s\n" % (self.n, os.urandom(8).hex().encode())
        self.sock.sendall(line)
        return recv_exact(self.sock, len(line)) == line

    def close(self):
        self.sock.close()


class Bulk:
    """A transfer through the tunnel in a thread: size random bytes sent to
    an echo app and read back; checks the sha256 of what came back."""

    def __init__(self, port, size):
        self.data = os.urandom(size)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120 * SLOW)
        self.result = None
        self.sent = 0
        self.got = 0
        self.t1 = threading.Thread(target=self._send, daemon=True)
        self.t2 = threading.Thread(target=self._recv, daemon=True)
        self.t1.start()
        self.t2.start()

    def _send(self):
        try:
            view = memoryview(self.data)
            while self.sent < len(self.data):
                self.sent += self.sock.send(view[self.sent:self.sent + 65536])
        except OSError as e:
            self.result = "send failed: %r" % e

    def _recv(self):
        buf = bytearray()
        try:
            while len(buf) < len(self.data):
                d = self.sock.recv(1 << 20)
                if not d:
                    break
                buf += d
                self.got = len(buf)
            self.result = self.result or (
                "ok" if harness.sha256(bytes(buf)) == harness.sha256(self.data)
                else "wrong data: %d of %d bytes" % (len(buf), len(self.data)))
        except OSError as e:
            self.result = self.result or "recv failed after %d bytes: %r" % (len(buf), e)

    def wait(self, timeout):
        self.t2.join(timeout)
        self.t1.join(1)
        return self.result

    def close(self):
        self.sock.close()


class ResumeTest(ProxyTest):
    def setUp(self):
        super().setUp()
        self.echo = self.server(apps.EchoServer)

    def start(self, pub_extra=(), priv_extra=()):
        self.start_public(extra=list(pub_extra))
        self.relay = CutRelay(self.tunnel_port)
        self.addCleanup(self.relay.close)
        self.app_port = free_port()
        self.priv = self.start_private(
            register=["e:%d:127.0.0.1:%d" % (self.app_port, self.echo.port)],
            port=self.relay.port, extra=list(priv_extra))
        self.wait_online(apps=["e"])

    def resumes(self):
        pv = self.find(self.list()["privates"], "home")
        return pv["resumes"]

    def test_reset_of_the_tunnel_connection(self):
        """The tunnel's TCP connection is reset while an interactive session
        and a transfer run: the private reconnects with its session at once,
        both go on, byte-exact."""
        self.start()
        session = LineEcho(self.app_port)
        self.addCleanup(session.close)
        self.assertTrue(session.roundtrip())
        bulk = Bulk(self.app_port, harness.BULK)
        self.addCleanup(bulk.close)
        harness.wait_until(lambda: bulk.got > harness.BULK // 8, 60 * SLOW, "the transfer going")
        self.relay.cut()
        self.priv.wait_log(r"ev=tunnel_resumed_link", 20 * SLOW)
        self.assertTrue(session.roundtrip(), "the interactive session broke")
        self.assertEqual(bulk.wait(120 * SLOW), "ok")
        self.assertTrue(session.roundtrip())
        self.assertGreaterEqual(self.resumes(), 1)
        self.public.wait_log(r"ev=tunnel_resumed name=home", 5 * SLOW)
        self.assertNotIn("ev=tunnel_down", self.public.output())

    def test_silent_cut_then_restore(self):
        """Nothing passes for a while (longer than the 15 s rule): both sides
        suspend; when the link comes back the session resumes, typed lines
        sent during the cut arrive, the transfer completes."""
        self.start()
        session = LineEcho(self.app_port)
        self.addCleanup(session.close)
        self.assertTrue(session.roundtrip())
        bulk = Bulk(self.app_port, harness.BULK // 2)
        self.addCleanup(bulk.close)
        harness.wait_until(lambda: bulk.got > harness.BULK // 16, 60 * SLOW, "the transfer going")
        self.relay.stall()
        typed = b"typed during the cut\n"
        session.sock.sendall(typed)
        self.priv.wait_log(r"ev=tunnel_link_down", 30 * SLOW)
        self.public.wait_log(r"ev=tunnel_suspended", 30 * SLOW)
        time.sleep(2)
        self.relay.restore()
        self.relay.cut()  # what was held in the relay is gone, as in a real cut
        self.priv.wait_log(r"ev=tunnel_resumed_link", 30 * SLOW)
        self.assertEqual(recv_exact(session.sock, len(typed)), typed)
        self.assertTrue(session.roundtrip())
        self.assertEqual(bulk.wait(120 * SLOW), "ok")

    def test_new_client_during_the_outage_waits(self):
        """A client that arrives while the tunnel is suspended is served once
        it resumes."""
        self.start()
        self.relay.stall()
        self.relay.cut()
        self.public.wait_log(r"ev=tunnel_suspended", 30 * SLOW)
        got = {}

        def client():
            try:
                with harness.connect(self.app_port, timeout=60 * SLOW) as c:
                    c.sendall(b"hello\n")
                    got["line"] = recv_exact(c, 6)
            except OSError as e:
                got["error"] = repr(e)
        th = threading.Thread(target=client)
        th.start()
        time.sleep(2)
        self.assertNotIn("error", got, "the waiting client was refused")
        self.relay.restore()
        th.join(60 * SLOW)
        self.assertEqual(got.get("line"), b"hello\n", got)

    def test_longer_than_the_grace_period(self):
        """A cut longer than the grace: the connections are closed with the
        reason, the private starts a fresh session, the app works again, and
        both sides' threads, descriptors (and, in release builds, memory) are
        back where they were before the connections opened."""
        self.start(pub_extra=["--resume-grace", "3"], priv_extra=["--resume-grace", "3"])
        for _ in range(3):  # what the first connections create lazily is part of the baseline
            self.echo_roundtrip(self.app_port)
        time.sleep(0.5)
        base = [faultlib.proc_stats(p.pid) for p in (self.public, self.priv)]
        sessions = [LineEcho(self.app_port) for _ in range(20)]
        for s in sessions:
            self.addCleanup(s.close)
            self.assertTrue(s.roundtrip())
        self.relay.stall()
        self.relay.cut()
        self.public.wait_log(r"ev=tunnel_down .*not resumed within the 3 s grace", 30 * SLOW)
        for s in sessions:
            self.assertTrue(harness.closed_by_peer(s.sock, 10 * SLOW))
        self.relay.restore()
        self.wait_online(apps=["e"], timeout=60 * SLOW)
        self.echo_roundtrip(self.app_port)
        last = {}

        def back():
            cur = [faultlib.proc_stats(p.pid) for p in (self.public, self.priv)]
            last["cur"] = cur
            return all(c.threads <= b.threads + 2 and c.fds <= b.fds + 2 and
                       (MODE != "release" or c.rss_kib <= b.rss_kib + 16 * 1024)
                       for b, c in zip(base, cur))
        if not faultlib.wait_for(back, 30 * SLOW, 0.5):
            self.fail("not back to the baseline: public, private before %r, now %r" %
                      (base, last["cur"]))

    def test_replayed_resume_token_is_refused(self):
        """A resumption token is good for one resume: after the private
        resumed with it, the same token from another address is refused and
        counted, and the private (which holds the new one) resumes again.
        This side speaks the protocol itself to see the tokens."""
        echo = self.echo
        self.start_public()
        app_port = free_port()
        hello = {"op": harness.OP_HELLO, "version": 1, "max_version": harness.PROTO_VERSION,
                 "token": self.token, "name": "replay", "window": 1 << 20,
                 "apps": [{"name": "r", "public_port": app_port, "target_host": "127.0.0.1",
                           "target_port": echo.port}]}

        def dial(src, extra=None):
            s = socket.socket()
            self.addCleanup(s.close)
            s.bind((src, 0))
            s.connect(("127.0.0.1", self.tunnel_port))
            s = harness.wrap_tunnel(s)
            self.addCleanup(s.close)
            s.sendall(harness.frame(dict(hello, **(extra or {}))))
            h, _ = harness.read_frame(s)
            # close() then resets the link, as a broken home link does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return s, h
        s1, w1 = dial("127.0.0.1")
        self.assertEqual(w1["op"], harness.OP_WELCOME, w1)
        sid, first = w1["session"], w1["resume_token"]
        s1.close()  # the link breaks (a reset)
        self.public.wait_log(r"ev=tunnel_suspended name=replay", 30 * SLOW)
        s2, w2 = dial("127.0.0.1", {"resume": {"session": sid, "token": first}})
        self.assertEqual((w2["op"], w2.get("resumed")), (harness.OP_WELCOME, True), w2)
        self.assertNotEqual(w2["resume_token"], first, "the resume did not give a new token")
        mark = len(self.public.output())
        s2.close()
        self.public.wait_log(r"ev=tunnel_suspended name=replay", 30 * SLOW, mark)
        s3, h3 = dial("127.0.0.4", {"resume": {"session": sid, "token": first}})
        self.assertEqual((h3["op"], h3.get("code")), (harness.OP_ERROR, "resume_refused"), h3)
        s4, w4 = dial("127.0.0.1", {"resume": {"session": sid, "token": w2["resume_token"]}})
        self.assertEqual((w4["op"], w4.get("resumed")), (harness.OP_WELCOME, True), w4)
        st, metrics = self.api("GET", "/metrics")
        self.assertRegex(metrics, r"nat_resume_refused_total 1\b")

    def test_forged_resume_token_is_refused(self):
        """Another address offers the session id with a wrong token: refused,
        counted; the session is left alone and the real private resumes."""
        self.start()
        m = self.public.wait_log(r"ev=tunnel_up name=home .*session=([0-9a-f]{32})", 5 * SLOW)
        sid = m.group(1)
        session = LineEcho(self.app_port)
        self.addCleanup(session.close)
        self.assertTrue(session.roundtrip())
        self.relay.stall()
        self.relay.cut()
        self.public.wait_log(r"ev=tunnel_suspended", 30 * SLOW)
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.3", 0))
        s.connect(("127.0.0.1", self.tunnel_port))
        s = harness.wrap_tunnel(s)
        self.addCleanup(s.close)
        s.sendall(harness.frame({"op": harness.OP_HELLO, "version": 1,
                                 "max_version": harness.PROTO_VERSION,
                                 "token": self.token, "name": "home", "window": 1 << 20,
                                 "resume": {"session": sid, "token": "ab" * 32}}))
        h, _ = harness.read_frame(s)
        self.assertEqual(h["op"], harness.OP_ERROR, h)
        self.assertEqual(h["code"], "resume_refused")
        self.public.wait_log(r"ev=resume_refused .*wrong resumption token", 5 * SLOW)
        self.relay.restore()
        self.priv.wait_log(r"ev=tunnel_resumed_link", 30 * SLOW)
        self.assertTrue(session.roundtrip())
        st, metrics = self.api("GET", "/metrics")
        self.assertRegex(metrics, r"nat_resume_refused_total 1\b")

    def test_connection_over_the_retention_budget_is_closed_others_resume(self):
        """With --resume-memory 1 (MiB) on the side that sends, a bulk upload
        keeps more unacknowledged data than fits: it stops being resumable and
        is closed at the break (counted); the interactive session resumes."""
        self.start(pub_extra=["--resume-memory", "1"])
        session = LineEcho(self.app_port)
        self.addCleanup(session.close)
        self.assertTrue(session.roundtrip())
        sink = self.server(apps.SinkServer)
        sink_port = free_port()
        self.register("sink", sink_port, sink.port)
        self.wait_online(apps=["sink"])
        up = socket.create_connection(("127.0.0.1", sink_port), timeout=60 * SLOW)
        self.addCleanup(up.close)
        chunk = os.urandom(1 << 20)
        for _ in range(8):
            up.sendall(chunk)
        self.public.wait_log(r"ev=conn_not_resumable .*retention budget", 30 * SLOW)
        self.relay.cut()
        self.priv.wait_log(r"ev=tunnel_resumed_link", 20 * SLOW)
        self.assertTrue(session.roundtrip(), "the interactive session did not resume")
        self.assertTrue(harness.closed_by_peer(up, 20 * SLOW), "the over-budget upload survived")
        pv = self.find(self.list()["privates"], "home")
        self.assertGreaterEqual(pv["conns_lost_on_break"], 1, pv)
        self.assertGreaterEqual(pv["conns_resumed"], 1, pv)

    def test_version_1_peer_works_without_resumption(self):
        """A private that speaks only version 1 (HELLO without max_version)
        gets version 1: no session, and a broken link ends it as before."""
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(harness.frame({"op": harness.OP_HELLO, "version": 1, "token": self.token,
                                 "name": "old", "window": 1 << 20}))
        h, _ = harness.read_frame(s)
        self.assertEqual(h["op"], harness.OP_WELCOME)
        self.assertEqual(h["version"], 1)
        self.assertNotIn("session", h)
        self.assertNotIn("resume_token", h)


if __name__ == "__main__":
    harness.main()
