"""The private side of a cluster (issue 13), against fake nodes: small Python
nodes that take proxy_private's tunnel, answer its HELLO with a WELCOME of
version 7 naming a node, and send NODES. The private must keep one tunnel to
each listed node (same name, token and apps), close the tunnels of nodes no
longer listed, not keep a node whose WELCOME names another, leave a node that
replaced it, follow the main session to another node (a load balancer in
front), take only nodes with the certificate of the node it was pinned to, and
end every tunnel and thread on SIGTERM.

The fake nodes speak plaintext (--insecure-plaintext), except the pinning test's,
which speak TLS with certificates made here by openssl. Each listens on port 0
of its own loopback address; every wait is bounded."""
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import harness
from harness import (ProxyTest, SLOW, frame, read_frame, OP_HELLO, OP_WELCOME, OP_ERROR,
                     OP_PING, OP_NODES, OP_BUILD, OP_CONNECTED, OP_DATA, OP_CLOSE, OP_APPS)
from helpers import apps

PROTO_CLUSTER = 7


class FakeTunnel:
    """One tunnel a fake node accepted: its HELLO, the frames read after it
    (by a thread of its own), and whether it is closed."""

    def __init__(self, sock, hello):
        self.sock = sock
        self.hello = hello
        self.frames = []
        self.closed = False
        self.cv = threading.Condition()
        self.wlock = threading.Lock()

    def send(self, hdr, payload=b""):
        with self.wlock:
            self.sock.sendall(frame(hdr, payload))

    def read_loop(self):
        while True:
            try:
                f = read_frame(self.sock)
            except (OSError, AssertionError, ValueError):
                f = None
            with self.cv:
                if f is None:
                    self.closed = True
                    self.cv.notify_all()
                    return
                self.frames.append(f)
                self.cv.notify_all()

    def wait_frame(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for h, p in self.frames:
                    if pred(h):
                        return h, p
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError("no %s on the tunnel (closed: %s)" % (what, self.closed))
                self.cv.wait(min(left, 0.2))

    def wait_closed(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.2))
        return True

    def close(self):
        for how in ("shutdown", "close"):
            try:
                if how == "shutdown":
                    self.sock.shutdown(socket.SHUT_RDWR)
                else:
                    self.sock.close()
            except OSError:
                pass


class FakeNode:
    """One node of a cluster as proxy_private sees it, on host:0. WELCOME
    names `answer` (the node's own name unless told otherwise); `nodes`, when
    set, is sent as NODES after every WELCOME. Plaintext tunnels get a PING a
    second (the private wants a byte every 15 s); with `cert` (a (certfile,
    keyfile) pair) it speaks TLS and pings nothing."""

    def __init__(self, name, host, answer=None, cert=None):
        self.name = name
        self.answer = answer or name
        self.nodes = None
        self.refuse = None       # an ERROR code to answer HELLO with instead
        self.lsock = socket.socket()
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.address = "%s:%d" % (host, self.port)
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            self.ctx.load_cert_chain(*cert)
        self.lock = threading.Lock()
        self.tunnels = []
        self.accepted = 0        # TCP connections taken
        self.tls_done = 0        # TLS handshakes completed
        self.stopping = threading.Event()
        self.threads = []
        self._start(self._accept_loop)
        if not cert:
            self._start(self._ping_loop)

    def _start(self, fn, *a):
        t = threading.Thread(target=fn, args=a, daemon=True)
        t.start()
        with self.lock:
            self.threads.append(t)

    def entry(self, name=None, address=None):
        return {"name": name or self.name, "address": address or self.address}

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            self._start(self._serve, s)

    def _serve(self, s):
        s.settimeout(10 * SLOW)
        try:
            if self.ctx:
                s = self.ctx.wrap_socket(s, server_side=True)
                with self.lock:
                    self.tls_done += 1
            f = read_frame(s)
            if f is None or f[0].get("op") != OP_HELLO:
                s.close()
                return
            if self.refuse:
                s.sendall(frame({"op": OP_ERROR, "code": self.refuse, "message": "refused"}))
                s.close()
                return
            welcome = {"op": OP_WELCOME, "version": PROTO_CLUSTER, "window": 4 << 20,
                       "heartbeat": 5, "node": self.answer,
                       "apps": [{"name": a["name"], "ok": True}
                                for a in f[0].get("apps", [])]}
            tun = FakeTunnel(s, f[0])
            tun.send(welcome)
            if self.nodes is not None:
                tun.send({"op": OP_NODES, "nodes": self.nodes})
            s.settimeout(None)
        except (OSError, AssertionError, ValueError):
            s.close()
            return
        with self.lock:
            if self.stopping.is_set():
                tun.close()
                return
            self.tunnels.append(tun)
        tun.read_loop()

    def _ping_loop(self):
        while not self.stopping.wait(1.0):
            for t in self.open_tunnels():
                try:
                    t.send({"op": OP_PING})
                except OSError:
                    pass

    def all_tunnels(self):
        with self.lock:
            return list(self.tunnels)

    def open_tunnels(self):
        return [t for t in self.all_tunnels() if not t.closed]

    def send_nodes(self, nodes):
        """The new list, on every open tunnel and after every later WELCOME."""
        self.nodes = nodes
        for t in self.open_tunnels():
            t.send({"op": OP_NODES, "nodes": nodes})

    def drop_all(self):
        for t in self.open_tunnels():
            t.close()

    def close(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            tunnels, threads = list(self.tunnels), list(self.threads)
        for t in tunnels:
            t.close()
        for t in threads:
            t.join(5)


def make_cert(folder, name):
    """A self-signed certificate and key (EC P-256) in folder: (crt, key)."""
    crt, key = os.path.join(folder, name + ".crt"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=" + name], check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return crt, key


class ClusterPrivateTest(ProxyTest):
    needs_binaries = True

    def setUp(self):
        self.fakes = []
        super().setUp()

    def _cleanup(self):
        # The private first (its exit code and sanitizer checks), then the
        # fake nodes it was talking to.
        try:
            super()._cleanup()
        finally:
            for n in self.fakes:
                n.close()

    def node(self, name, host, **kw):
        n = FakeNode(name, host, **kw)
        self.fakes.append(n)
        return n

    def start(self, main, register=(), tls=False, extra=()):
        plain = [] if tls or "--insecure-plaintext" in harness.EXTRA_ARGS \
            else ["--insecure-plaintext"]
        return self.start_private(port=main.port, register=register,
                                  extra=plain + list(extra))

    def wait_open(self, node, n, timeout=None, what=None):
        """Until node has exactly n open tunnels; returns them."""
        def ok():
            o = node.open_tunnels()
            return (o or [True]) if len(o) == n else None
        got = harness.wait_until(ok, timeout or 20 * SLOW,
                                 what or "%d open tunnel(s) on %s" % (n, node.name))
        return got if n else []

    def three_nodes(self, register=(), extra=()):
        n1 = self.node("n1", "127.0.0.1")
        n2 = self.node("n2", "127.0.0.21")
        n3 = self.node("n3", "127.0.0.22")
        n1.nodes = [n1.entry(), n2.entry(), n3.entry()]
        p = self.start(n1, register=register, extra=extra)
        return p, n1, n2, n3

    def test_one_tunnel_to_each_listed_node(self):
        echo = self.server(apps.EchoServer)
        spec = "web:%d:127.0.0.1:%d" % (harness.free_port(), echo.port)
        p, n1, n2, n3 = self.three_nodes(register=[spec])
        t1 = self.wait_open(n1, 1)[0]
        t2 = self.wait_open(n2, 1)[0]
        t3 = self.wait_open(n3, 1)[0]
        for t in (t2, t3):
            for k in ("name", "token", "apps", "max_version"):
                self.assertEqual(t.hello.get(k), t1.hello.get(k), "HELLO's %r differs" % k)
        self.assertEqual(t1.hello["name"], "home")
        self.assertEqual(t1.hello["token"], self.token)
        self.assertEqual([a["name"] for a in t1.hello["apps"]], ["web"])
        p.wait_log(r"ev=cluster_nodes nodes=n1,n2,n3", 10 * SLOW)
        for n in (n2, n3):
            p.wait_log(r"ev=node_session_start node=%s address=%s" % (n.name,
                                                                      re.escape(n.address)),
                       10 * SLOW)
            p.wait_log(r"ev=tunnel_up .* node=%s" % n.name, 10 * SLOW)
        p.wait_log(r"ev=tunnel_up .* node=n1", 10 * SLOW)
        self.assertNotIn("node_session_start node=n1", p.output())
        # A node's tunnel carries connections like the main one.
        t3.send({"op": OP_BUILD, "conn": 7, "app": "web", "target_host": "127.0.0.1",
                 "target_port": echo.port})
        t3.wait_frame(lambda h: h["op"] == OP_CONNECTED and h["conn"] == 7, 10 * SLOW,
                      "CONNECTED")
        t3.send({"op": OP_DATA, "conn": 7, "len": 5}, b"hello")
        _, data = t3.wait_frame(lambda h: h["op"] == OP_DATA and h["conn"] == 7, 10 * SLOW,
                                "the echo")
        self.assertEqual(data, b"hello")
        # One tunnel each, and it stays one.
        time.sleep(1)
        for n in (n1, n2, n3):
            self.assertEqual(len(n.all_tunnels()), 1, "%s: %d tunnels" % (
                n.name, len(n.all_tunnels())))

    def test_node_dropped_from_the_list_is_left(self):
        p, n1, n2, n3 = self.three_nodes()
        self.wait_open(n2, 1)
        t3 = self.wait_open(n3, 1)[0]
        mark = len(p.output())
        n1.send_nodes([n1.entry(), n2.entry()])
        self.assertTrue(t3.wait_closed(10 * SLOW), "n3's tunnel is still open")
        p.wait_log(r"ev=cluster_nodes nodes=n1,n2\b", 10 * SLOW, start=mark)
        p.wait_log(r'ev=node_session_stop node=n3 reason="no longer in the node list"',
                   10 * SLOW, start=mark)
        time.sleep(2)
        self.assertEqual(len(n3.all_tunnels()), 1, "the private came back to n3")
        self.assertEqual(len(n2.open_tunnels()), 1, "n2's tunnel went too")
        self.assertEqual(len(n1.open_tunnels()), 1)
        # Listed again: a tunnel again.
        n1.send_nodes([n1.entry(), n2.entry(), n3.entry()])
        self.wait_open(n3, 1)

    def test_node_answering_as_another_is_not_kept(self):
        n1 = self.node("n1", "127.0.0.1")
        n2 = self.node("n2", "127.0.0.21", answer="n9")
        n1.nodes = [n1.entry(), n2.entry()]
        p = self.start(n1)
        self.wait_open(n1, 1)
        p.wait_log(r"ev=node_mismatch node=n2 .*answered=n9", 15 * SLOW)
        # Tried again after a backoff, never kept.
        harness.wait_until(lambda: len(n2.all_tunnels()) >= 2, 20 * SLOW,
                           "a second attempt at n2")
        for t in n2.all_tunnels()[:2]:
            self.assertTrue(t.wait_closed(10 * SLOW), "a tunnel to n2 (as n9) is kept")
        self.assertNotRegex(p.output(), r"ev=tunnel_up .* node=n9")
        self.assertEqual(len(n1.all_tunnels()), 1, "the main session was disturbed")

    def test_replaced_node_session_leaves(self):
        p, n1, n2, n3 = self.three_nodes()
        self.wait_open(n2, 1)
        t3 = self.wait_open(n3, 1)[0]
        t3.send({"op": OP_ERROR, "code": "replaced", "message": "a newer tunnel took over"})
        self.assertTrue(t3.wait_closed(10 * SLOW))
        p.wait_log(r"ev=replaced name=home node=n3", 10 * SLOW)
        p.wait_log(r'ev=node_session_stop node=n3 reason="replaced', 10 * SLOW)
        time.sleep(3)
        self.assertEqual(len(n3.all_tunnels()), 1, "the private fought for n3")
        self.assertEqual(len(n2.open_tunnels()), 1)
        self.assertEqual(len(n1.open_tunnels()), 1)

    def test_main_session_moving_to_a_listed_node(self):
        """The command line's address is a load balancer: first it leads to
        n1, then (after the main tunnel drops) to n2. The node session to n2
        then stops, and one to n1 starts."""
        lb = self.node("lb", "127.0.0.1", answer="n1")
        n1 = self.node("n1", "127.0.0.21")
        n2 = self.node("n2", "127.0.0.22")
        lb.nodes = [n1.entry(), n2.entry()]
        p = self.start(lb)
        self.wait_open(lb, 1)
        t2 = self.wait_open(n2, 1)[0]
        time.sleep(0.5)
        self.assertEqual(n1.all_tunnels(), [], "a node session went to the main's node")
        mark = len(p.output())
        lb.answer = "n2"
        lb.drop_all()
        self.assertTrue(t2.wait_closed(15 * SLOW), "the node session to n2 stayed")
        p.wait_log(r'ev=node_session_stop node=n2 reason="the main session reaches this node"',
                   10 * SLOW, start=mark)
        self.wait_open(n1, 1, what="a node session to n1 once the main one is on n2")
        self.wait_open(lb, 1)
        time.sleep(1)
        self.assertEqual(n2.open_tunnels(), [])

    def test_sigterm_ends_every_session(self):
        p, n1, n2, n3 = self.three_nodes()
        for n in (n1, n2, n3):
            self.wait_open(n, 1)
        rc = p.stop()
        self.assertEqual(rc, 0, p.log_tail())
        for n in (n1, n2, n3):
            for t in n.all_tunnels():
                self.assertTrue(t.wait_closed(5 * SLOW), "%s's tunnel stays open" % n.name)
        out = p.output()
        for name in ("n2", "n3"):
            self.assertRegex(out, r'ev=node_session_stop node=%s reason="shutting down"' % name)
        self.assertIn("ev=exit code=0", out)

    def test_reload_pushes_the_apps_to_every_tunnel(self):
        echo = self.server(apps.EchoServer)
        conf = os.path.join(self.tmp, "private.conf")
        line = "register = web:%d:127.0.0.1:%d\n" % (harness.free_port(), echo.port)
        with open(conf, "w") as f:
            f.write(line)
        p, n1, n2, n3 = self.three_nodes(extra=["--config", conf])
        tunnels = [self.wait_open(n, 1)[0] for n in (n1, n2, n3)]
        for t in tunnels:
            self.assertEqual([a["name"] for a in t.hello["apps"]], ["web"])
        with open(conf, "w") as f:
            f.write(line + "register = more:%d:127.0.0.1:%d\n" % (harness.free_port(),
                                                                   echo.port))
        p.popen.send_signal(signal.SIGHUP)
        for t in tunnels:
            h, _ = t.wait_frame(lambda h: h["op"] == OP_APPS, 10 * SLOW, "APPS")
            self.assertEqual([a["name"] for a in h["register"]], ["more"], h)
        p.wait_log(r"ev=reload_apps_changed added=more .*on the running tunnel", 10 * SLOW)

    def test_max_conns_counts_every_tunnel(self):
        echo = self.server(apps.EchoServer)
        p, n1, n2, n3 = self.three_nodes(extra=["--max-conns", "2"])
        tunnels = [self.wait_open(n, 1)[0] for n in (n1, n2, n3)]
        for i, t in enumerate(tunnels[:2]):
            t.send({"op": OP_BUILD, "conn": 1, "app": "a", "target_host": "127.0.0.1",
                    "target_port": echo.port})
            t.wait_frame(lambda h: h["op"] == OP_CONNECTED and h["conn"] == 1, 10 * SLOW,
                         "CONNECTED on tunnel %d" % (i + 1))
        tunnels[2].send({"op": OP_BUILD, "conn": 1, "app": "a", "target_host": "127.0.0.1",
                         "target_port": echo.port})
        h, _ = tunnels[2].wait_frame(lambda h: h["op"] in (OP_CLOSE, OP_CONNECTED), 10 * SLOW,
                                     "CLOSE for the third connection")
        self.assertEqual(h["op"], OP_CLOSE, h)
        self.assertIn("--max-conns", h.get("reason", ""))
        p.wait_log(r"ev=conn_refused .*--max-conns 2.*refused_total=1", 5 * SLOW)

    def test_a_fatal_main_session_ends_the_node_sessions(self):
        p, n1, n2, n3 = self.three_nodes()
        for n in (n1, n2, n3):
            self.wait_open(n, 1)
        p.expect_exit = 3
        n1.refuse = "bad_token"
        n1.drop_all()
        harness.wait_until(lambda: not p.alive(), 20 * SLOW, "the private's exit")
        self.assertEqual(p.popen.returncode, 3, p.log_tail())
        for n in (n2, n3):
            for t in n.all_tunnels():
                self.assertTrue(t.wait_closed(5 * SLOW), "%s's tunnel stays open" % n.name)
        self.assertIn("ev=exit code=3", p.output())

    def test_nodes_must_share_the_pinned_certificate(self):
        if "--insecure-plaintext" in harness.EXTRA_ARGS:
            self.skipTest("the suite runs with --insecure-plaintext")
        if not shutil.which("openssl"):
            self.skipTest("no openssl to make certificates")
        shared = make_cert(self.tmp, "cluster")
        other = make_cert(self.tmp, "stranger")
        n1 = self.node("n1", "127.0.0.1", cert=shared)
        n2 = self.node("n2", "127.0.0.21", cert=shared)
        n3 = self.node("n3", "127.0.0.22", cert=other)
        n1.nodes = [n1.entry(), n2.entry(), n3.entry()]
        p = self.start(n1, tls=True)
        t2 = self.wait_open(n2, 1)[0]
        self.assertEqual(t2.hello["token"], self.token)
        m = p.wait_log(r"lvl=error ev=fingerprint_mismatch node=n3 .*", 15 * SLOW)
        self.assertIn("nodes of a cluster share one certificate", m.group(0))
        self.assertIn("--cert/--key on every node", m.group(0))
        harness.wait_until(lambda: n3.tls_done >= 1, 10 * SLOW, "a TLS handshake with n3")
        time.sleep(1)
        self.assertEqual(n3.all_tunnels(), [], "n3 (another certificate) got a HELLO")
        with open(os.path.join(self.tmp, "known_hosts")) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
        self.assertEqual(len(lines), 1, "known_hosts: %r" % lines)
        self.assertIn("127.0.0.1:%d" % n1.port, lines[0])


if __name__ == "__main__":
    harness.main()
