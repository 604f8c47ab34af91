"""UDP apps (protocol version 3): datagrams whole each way, sessions per
client address, idle expiry, limits, drops counted by reason, a UDP flood that
leaves TCP on the same tunnel working, and the UDP operations checked on both
sides (a hand-written peer stands in for the other program). DNS and
WireGuard through a real NAT are in tests/nat_udp.py."""
import hashlib
import os
import select
import signal
import socket
import threading
import time

import harness
from harness import ProxyTest, SLOW, free_port, frame, read_frame
from harness import OP_HELLO, OP_WELCOME, OP_ERROR, OP_UDP_DATA, OP_UDP_CLOSE
from helpers import apps


def free_udp_port():
    """A port free for both TCP and UDP on 127.0.0.1 a moment ago."""
    for _ in range(50):
        port = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
    raise AssertionError("no free UDP port")


def client(timeout=5):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    c.bind(("127.0.0.1", 0))
    c.settimeout(timeout * SLOW)
    return c


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def udp_fds(pid):
    """Descriptors of pid that are UDP sockets."""
    inodes = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/%d/net/udp" % pid, "/proc/%d/net/udp6" % pid):
        with open(table) as f:
            for line in f.readlines()[1:]:
                if line.split()[9] in inodes:
                    n += 1
    return n


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class UdpTest(ProxyTest):
    def start(self, pub_extra=(), priv_extra=(), udp_server=apps.UdpEchoServer, name="u"):
        self.target = self.server(udp_server)
        self.start_public(extra=list(pub_extra))
        self.port = free_udp_port()
        self.priv = self.start_private(
            register=["%s:%d:127.0.0.1:%d/udp" % (name, self.port, self.target.port)],
            extra=list(priv_extra))
        self.wait_online(apps=[name])
        return self.port

    def app(self, name="u"):
        return self.find(self.list()["apps"], name)

    def roundtrip(self, c, data, port=None):
        c.sendto(data, ("127.0.0.1", port or self.port))
        got, _ = c.recvfrom(70000)
        return got

    def test_sizes_whole_each_way(self):
        """Datagrams of every size class arrive whole and in one piece each
        way (the target answers with the bytes reversed), including the
        largest IPv4 can carry and an empty one."""
        self.start()
        c = client()
        self.addCleanup(c.close)
        for n in (1, 512, 1472, 1473, 9000, 32768, 65507, 0):
            data = os.urandom(n)
            got = self.roundtrip(c, data)
            self.assertEqual(len(got), n, "a %d-byte datagram came back as %d bytes" % (n, len(got)))
            self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(data[::-1]).digest(),
                             "a %d-byte datagram changed on the way" % n)
        a = self.app()
        self.assertEqual(a["protocol"], "udp")
        self.assertEqual(a["datagrams_in"], 8, a)
        self.assertEqual(a["datagrams_out"], 8, a)
        self.assertEqual(a["total_sessions"], 1, a)
        self.assertEqual(a["bytes_in"], 1 + 512 + 1472 + 1473 + 9000 + 32768 + 65507, a)
        self.assertEqual(sum(a["drops"].values()), 0, a)

    def test_a_thousand_sessions_get_their_own_replies(self):
        """1,000 client ports at once: each is its own session and gets only
        its own answers."""
        self.start()
        socks = [client() for _ in range(1000)]
        for s in socks:
            self.addCleanup(s.close)
            s.setblocking(False)
        want = {s.fileno(): ("session %d %s" % (i, os.urandom(6).hex())).encode()
                for i, s in enumerate(socks)}
        by_fd = {s.fileno(): s for s in socks}
        got = {}
        deadline = time.monotonic() + 30 * SLOW
        while len(got) < len(socks) and time.monotonic() < deadline:
            # (Re)send for the sockets still waiting: UDP may drop, the test
            # is about who gets what.
            for fd, s in by_fd.items():
                if fd not in got:
                    s.sendto(want[fd], ("127.0.0.1", self.port))
            until = time.monotonic() + 2 * SLOW
            while len(got) < len(socks) and time.monotonic() < until:
                r, _, _ = select.select([s for fd, s in by_fd.items() if fd not in got], [], [],
                                        0.2)
                for s in r:
                    data = s.recv(70000)
                    self.assertEqual(data, want[s.fileno()][::-1],
                                     "a client got an answer that was not its own")
                    got[s.fileno()] = True
        self.assertEqual(len(got), len(socks), "clients without an answer")
        a = self.app()
        self.assertEqual(a["active_sessions"], 1000, a)
        self.assertEqual(a["total_sessions"], 1000, a)
        self.assertEqual(len(self.target.peers), 1000, "the target saw other than 1000 sockets")

    def test_many_replies_and_unsolicited_ones(self):
        """A target may answer one request with several datagrams, and send
        more later without being asked: all reach the client's address."""
        class Burst(apps.UdpServer):
            def reply(self, data, peer):
                return [data + b"-%d" % i for i in range(5)]
        self.start(udp_server=Burst)
        c = client()
        self.addCleanup(c.close)
        c.sendto(b"ask", ("127.0.0.1", self.port))
        got = sorted(c.recvfrom(100)[0] for _ in range(5))
        self.assertEqual(got, [b"ask-%d" % i for i in range(5)])
        peer = next(iter(self.target.peers))
        for i in range(3):
            self.target.send_to(b"news %d" % i, peer)
            self.assertEqual(c.recvfrom(100)[0], b"news %d" % i)

    def test_idle_session_is_freed_on_both_sides(self):
        """A silent session ends after its udp_idle_timeout: gone from /list,
        and its socket at home is closed."""
        self.target = self.server(apps.UdpEchoServer)
        self.start_public()
        self.priv = self.start_private()
        self.wait_online()
        self.port = free_udp_port()
        st, body = self.api("POST", "/register", {
            "name": "u", "public_port": self.port, "target_host": "127.0.0.1",
            "target_port": self.target.port, "protocol": "udp", "udp_idle_timeout": 5})
        self.assertEqual(st, 201, body)
        self.wait_online(apps=["u"])
        base = udp_fds(self.priv.popen.pid)
        cs = [client() for _ in range(20)]
        for c in cs:
            self.addCleanup(c.close)
            self.assertEqual(self.roundtrip(c, b"ping"), b"gnip")
        self.assertEqual(self.app()["active_sessions"], 20)
        self.assertEqual(udp_fds(self.priv.popen.pid), base + 20)
        harness.wait_until(lambda: self.app()["active_sessions"] == 0, 15 * SLOW,
                           "idle sessions ended")
        harness.wait_until(lambda: udp_fds(self.priv.popen.pid) == base, 10 * SLOW,
                           "the sessions' sockets at home closed")
        self.priv.wait_log(r"ev=udp_session_end session=\d+ reason=\"closed by the public", 5)
        # The client is welcome back: a new session.
        self.assertEqual(self.roundtrip(cs[0], b"again"), b"niaga")
        self.assertEqual(self.app()["total_sessions"], 21)

    def test_idle_time_from_the_register_option(self):
        """--register .../udp,udp_idle=S sets the app's idle time (as /list
        shows); out of 5-3600, or on a TCP app, it is refused at start."""
        self.target = self.server(apps.UdpEchoServer)
        self.start_public()
        self.port = free_udp_port()
        self.start_private(register=["u:%d:127.0.0.1:%d/udp,udp_idle=7" % (self.port,
                                                                           self.target.port)])
        self.wait_online(apps=["u"])
        self.assertEqual(self.app()["udp_idle_timeout"], 7)
        c = client()
        self.addCleanup(c.close)
        self.assertEqual(self.roundtrip(c, b"ping"), b"gnip")  # the echo reverses
        for bad in ("b:%d:127.0.0.1:9/udp,udp_idle=4", "b:%d:127.0.0.1:9/udp,udp_idle=3601",
                    "b:%d:127.0.0.1:9/udp,udp_idle=x", "b:%d:127.0.0.1:9,udp_idle=30"):
            p = self.start_private(name="bad", register=[bad % free_port()])
            p.expect_exit = None
            harness.wait_until(lambda: not p.alive(), 10 * SLOW, "private exits on " + bad)
            self.assertNotEqual(p.popen.returncode, 0, bad)
            self.assertIn("udp_idle=5-3600", p.output(), bad)

    def test_one_way_streams_are_not_cut(self):
        """Traffic in one direction only keeps a session alive past its idle
        time, either way: client to target, then target to client."""
        self.target = self.server(apps.UdpSinkServer)
        self.start_public()
        self.priv = self.start_private()
        self.wait_online()
        self.port = free_udp_port()
        st, body = self.api("POST", "/register", {
            "name": "u", "public_port": self.port, "target_host": "127.0.0.1",
            "target_port": self.target.port, "protocol": "udp", "udp_idle_timeout": 5})
        self.assertEqual(st, 201, body)
        self.wait_online(apps=["u"])
        c = client()
        self.addCleanup(c.close)
        for i in range(9):  # 9 s of a datagram a second, idle time 5 s
            c.sendto(b"up %d" % i, ("127.0.0.1", self.port))
            time.sleep(1)
        harness.wait_until(lambda: self.target.received == 9, 5 * SLOW, "9 datagrams at home")
        self.assertEqual(self.app()["total_sessions"], 1, "the stream was cut into sessions")
        peer = next(iter(self.target.peers))
        for i in range(9):
            self.target.send_to(b"down %d" % i, peer)
            self.assertEqual(c.recvfrom(100)[0], b"down %d" % i)
            time.sleep(1)
        a = self.app()
        self.assertEqual(a["total_sessions"], 1, a)
        self.assertEqual(a["active_sessions"], 1, a)

    def test_session_limit_drops_and_counts(self):
        """Past --max-udp-sessions-per-app a new client's datagrams are
        dropped and counted; the sessions inside the limit keep working."""
        self.start(pub_extra=["--max-udp-sessions-per-app", "3"])
        cs = [client(timeout=1) for _ in range(5)]
        answered = 0
        for c in cs:
            self.addCleanup(c.close)
            c.sendto(b"hi", ("127.0.0.1", self.port))
            try:
                c.recvfrom(100)
                answered += 1
            except socket.timeout:
                pass
        self.assertEqual(answered, 3)
        a = self.app()
        self.assertEqual(a["active_sessions"], 3, a)
        self.assertEqual(a["drops"]["session_limit"], 2, a)
        _, metrics = self.api("GET", "/metrics")
        self.assertIn('nat_udp_app_drops_total{app="u",reason="session_limit"} 2', metrics)
        self.assertIn('nat_udp_app_sessions_active{app="u"} 3', metrics)

    def test_target_unreachable_is_counted(self):
        """Datagrams to a target port nobody listens on: the ICMP error ends
        the session at home and the drop is counted as unreachable."""
        dead = free_udp_port()
        self.start_public()
        self.port = free_udp_port()
        self.start_private(register=["u:%d:127.0.0.1:%d/udp" % (self.port, dead)])
        self.wait_online(apps=["u"])
        c = client(timeout=0.3)
        self.addCleanup(c.close)

        def counted():
            c.sendto(b"anyone?", ("127.0.0.1", self.port))
            return self.app()["drops"]["unreachable"] >= 1
        harness.wait_until(counted, 10 * SLOW, "an unreachable drop counted")

    def test_tcp_and_udp_apps_share_a_port_number(self):
        """A TCP app and a UDP app may use the same public port number."""
        echo = self.server(apps.EchoServer)
        self.target = self.server(apps.UdpEchoServer)
        self.start_public()
        self.port = free_udp_port()
        self.start_private(register=["t:%d:127.0.0.1:%d" % (self.port, echo.port),
                                     "u:%d:127.0.0.1:%d/udp" % (self.port, self.target.port)])
        self.wait_online(apps=["t", "u"])
        self.echo_roundtrip(self.port)
        c = client()
        self.addCleanup(c.close)
        self.assertEqual(self.roundtrip(c, b"both"), b"htob")
        # A second UDP app on the same port is a conflict, a second TCP one too.
        st, body = self.api("POST", "/register", {
            "name": "u2", "public_port": self.port, "target_host": "127.0.0.1",
            "target_port": 9, "protocol": "udp", "private": "home"})
        self.assertEqual(st, 409, body)
        self.assertIn("UDP port %d is already used by app 'u'" % self.port, body["error"])
        st, body = self.api("POST", "/register", {
            "name": "u3", "public_port": self.port, "target_host": "127.0.0.1",
            "target_port": 9, "protocol": "sctp", "private": "home"})
        self.assertEqual(st, 400, body)
        self.assertIn("'protocol' must be", body["error"])
        # They persist with their protocol.
        self.public.stop()
        self.start_public()
        self.wait_online(apps=["t", "u"])
        self.assertEqual(self.roundtrip(c, b"again"), b"niaga")
        self.echo_roundtrip(self.port)

    def start_tcp_and_udp_sinks(self):
        """Both proxies with a TCP app "t" (a sink answering the sha256 of
        what it got) and a UDP app "u" on self.port (self.target counts the
        datagrams) on one tunnel; returns t's public port."""
        sink = self.server(apps.SinkServer)
        self.target = self.server(apps.UdpSinkServer)
        self.start_public()
        self.port = free_udp_port()
        tcp_port = free_port()
        self.priv = self.start_private(register=[
            "t:%d:127.0.0.1:%d" % (tcp_port, sink.port),
            "u:%d:127.0.0.1:%d/udp" % (self.port, self.target.port)])
        self.wait_online(apps=["t", "u"])
        return tcp_port

    def test_udp_flood_leaves_tcp_working(self):
        """A UDP flood at one app while a TCP transfer runs on the same
        tunnel: the transfer completes intact, the public side keeps reading
        (and dropping, counted) while the private side is frozen for a moment,
        and memory stays within the queue budget."""
        tcp_port = self.start_tcp_and_udp_sinks()
        rss0 = rss_kib(self.public.popen.pid)
        stop = threading.Event()
        sent = [0]

        def flood():
            socks = [client() for _ in range(8)]
            payload = os.urandom(1400)
            while not stop.is_set():
                for s in socks:
                    try:
                        s.sendto(payload, ("127.0.0.1", self.port))
                        sent[0] += 1
                    except OSError:
                        pass
            for s in socks:
                s.close()
        fl = threading.Thread(target=flood, daemon=True)
        fl.start()
        self.addCleanup(stop.set)
        data = apps.pattern_bytes(harness.BULK, 7)
        result = {}

        def transfer():
            with harness.connect(tcp_port, timeout=120 * SLOW) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                result["reply"] = harness.recv_all(s)
        tr = threading.Thread(target=transfer, daemon=True)
        tr.start()
        time.sleep(0.5)
        # Frozen home: the tunnel stops; the public side must keep reading
        # the UDP socket and drop what cannot wait, not buffer it.
        before = self.app()["datagrams_in"]
        os.kill(self.priv.popen.pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)
            during = self.app()
        finally:
            os.kill(self.priv.popen.pid, signal.SIGCONT)
        self.assertGreater(during["datagrams_in"], before + 100,
                           "the public side stopped reading the UDP socket: %s" % during)
        peak = rss_kib(self.public.popen.pid)
        tr.join(120 * SLOW)
        stop.set()
        fl.join(10)
        self.assertFalse(tr.is_alive(), "the TCP transfer did not finish")
        # The sink answers with the sha256 of what it got.
        self.assertEqual(result.get("reply", b"").strip(),
                         b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))
        a = self.app()
        self.assertGreater(sum(a["drops"].values()), 0, a)
        print("public RSS %d -> %d KiB under the flood; drops %s" % (rss0, peak, a["drops"]))
        if harness.MODE == "release":  # the sanitizers keep freed memory in quarantine
            self.assertLess(peak - rss0, (64 + 48) * 1024,
                            "the public side grew by %d KiB under the flood" % (peak - rss0))
        self.assertLessEqual(self.target.received, a["datagrams_in"])

    def test_udp_beside_slow_tcp_is_not_held_back(self):
        """A UDP stream beside a slow TCP stream on the same tunnel (an
        interactive session: 4 KiB every 20 ms) is never made to wait for
        TCP's share: TCP is not backlogged, so every datagram arrives and
        none is dropped (docs/OPERATIONS.md, UDP apps)."""
        tcp_port = self.start_tcp_and_udp_sinks()
        stop = threading.Event()
        trickled = [0]

        def trickle():
            with harness.connect(tcp_port, timeout=30 * SLOW) as s:
                chunk = os.urandom(4096)
                while not stop.is_set():
                    s.sendall(chunk)
                    trickled[0] += len(chunk)
                    time.sleep(0.02)
        tr = threading.Thread(target=trickle, daemon=True)
        tr.start()
        self.addCleanup(stop.set)
        time.sleep(0.3)
        c = client()
        self.addCleanup(c.close)
        n, payload = 1500, os.urandom(1200)
        for i in range(n):
            c.sendto(payload, ("127.0.0.1", self.port))
            if i % 10 == 9:
                time.sleep(0.02)  # 500 datagrams a second
        deadline = time.monotonic() + 10 * SLOW
        while self.target.received < n and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        tr.join(10 * SLOW)
        a = self.app()
        self.assertGreater(trickled[0], 0, "the TCP stream did not run")
        self.assertEqual(a["drops"], {k: 0 for k in a["drops"]}, a)
        self.assertEqual(a["datagrams_in"], n, a)
        self.assertEqual(self.target.received, n, a)

    def test_private_older_than_udp_is_refused_clearly(self):
        """A private of protocol version 2 (no UDP): a UDP app for it is
        refused with a clear error; TCP apps work as before."""
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 2, "token": self.token,
                         "name": "old", "window": 1 << 20}))
        h, _ = read_frame(s)
        self.assertEqual((h["op"], h["version"]), (OP_WELCOME, 2), h)
        self.wait_online(private="old")  # WELCOME goes out just before it is listed
        st, body = self.api("POST", "/register", {
            "name": "u", "public_port": free_udp_port(), "target_host": "127.0.0.1",
            "target_port": 53, "protocol": "udp", "private": "old"})
        self.assertEqual(st, 409, body)
        self.assertIn("speaks protocol version 2, which has no UDP", body["error"])
        self.register("t", free_port(), 22, private="old")

    def test_public_side_without_udp_is_told_apart(self):
        """The private side names its UDP apps in udp_apps, which a public
        side of version 2 ignores: with such a peer (here by hand) it logs
        that they were not registered and keeps its TCP apps."""
        srv = socket.socket()
        self.addCleanup(srv.close)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10 * SLOW)
        priv = self.start_private(
            port=srv.getsockname()[1], extra=["--insecure-plaintext"],
            register=["t:%d:127.0.0.1:22" % free_port(), "u:%d:127.0.0.1:53/udp" % free_port()])
        c, _ = srv.accept()
        self.addCleanup(c.close)
        c.settimeout(10 * SLOW)
        h, _ = read_frame(c)
        self.assertEqual([a["name"] for a in h["apps"]], ["t"])
        self.assertEqual([(a["name"], a["protocol"]) for a in h["udp_apps"]], [("u", "udp")])
        c.sendall(frame({"op": OP_WELCOME, "version": 2, "window": 1 << 20, "heartbeat": 5,
                         "apps": [{"name": "t", "ok": True}]}))
        priv.wait_log(r"ev=udp_apps_not_registered count=1 version=2", 10 * SLOW)


class UdpProtocolTest(ProxyTest):
    """The UDP operations checked by each side, with a hand-written peer."""

    def fake_private(self, version=3):
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": version,
                         "token": self.token, "name": "fake", "window": 1 << 20}))
        h, _ = read_frame(s)
        self.assertEqual(h["op"], OP_WELCOME, h)
        return s

    def expect_end(self, s, what):
        self.assertTrue(harness.closed_by_peer(s, 10 * SLOW),
                        "the public side kept the tunnel after %s" % what)

    def test_public_side_ends_the_tunnel_on_bad_udp_operations(self):
        self.start_public()
        cases = [
            (2, {"op": OP_UDP_DATA, "session": 1, "len": 1}, b"x",
             "unexpected op UDP_DATA"),
            (3, {"op": OP_UDP_DATA, "session": 1, "len": 1}, b"x",
             "UDP_DATA for session 1 that was never opened"),
            (3, {"op": OP_UDP_CLOSE, "session": 9}, b"",
             "UDP_CLOSE for session 9 that was never opened"),
            (3, {"op": OP_UDP_DATA, "session": 1, "len": 70000}, b"",
             "member 'len' out of range"),
            (3, {"op": OP_UDP_DATA, "session": 1, "len": 0, "drops": {"stolen": 1}}, b"",
             "member 'drops' has a bad entry"),
        ]
        for version, hdr, payload, why in cases:
            s = self.fake_private(version)
            s.sendall(frame(hdr, payload))
            self.expect_end(s, why)
            self.public.wait_log(why.replace("'", "."), 5 * SLOW)
        self.assertTrue(self.public.alive())

    def test_private_side_checks_udp_operations(self):
        """Against a hand-written public side: an open reaches the target and
        its answer comes back; past --max-conns the session is refused with
        "limit"; a datagram for a session never opened ends the tunnel."""
        target = self.server(apps.UdpEchoServer)
        srv = socket.socket()
        self.addCleanup(srv.close)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10 * SLOW)
        priv = self.start_private(port=srv.getsockname()[1],
                                  extra=["--insecure-plaintext", "--max-conns", "1"])
        c, _ = srv.accept()
        self.addCleanup(c.close)
        c.settimeout(10 * SLOW)
        h, _ = read_frame(c)
        self.assertEqual(h["max_version"], harness.PROTO_VERSION)
        c.sendall(frame({"op": OP_WELCOME, "version": 3, "window": 1 << 20, "heartbeat": 5}))
        opening = {"app": "u", "target_host": "127.0.0.1", "target_port": target.port,
                   "idle": 30}
        c.sendall(frame({"op": OP_UDP_DATA, "session": 1, "len": 5, "open": opening}, b"hello"))

        def next_udp():
            while True:
                f = read_frame(c)
                self.assertIsNotNone(f, "the private side closed the tunnel")
                if f[0]["op"] in (OP_UDP_DATA, OP_UDP_CLOSE):
                    return f
        h, payload = next_udp()
        self.assertEqual((h["op"], h["session"], payload), (OP_UDP_DATA, 1, b"olleh"), h)
        # The open again (as after a resume) is just a datagram.
        c.sendall(frame({"op": OP_UDP_DATA, "session": 1, "len": 2, "open": opening}, b"ab"))
        h, payload = next_udp()
        self.assertEqual((h["session"], payload), (1, b"ba"))
        # --max-conns 1: a second session is refused.
        c.sendall(frame({"op": OP_UDP_DATA, "session": 2, "len": 1, "open": opening}, b"x"))
        h, _ = next_udp()
        self.assertEqual((h["op"], h["session"], h.get("reason")), (OP_UDP_CLOSE, 2, "limit"), h)
        # The public side ends session 1: its socket at home goes.
        c.sendall(frame({"op": OP_UDP_CLOSE, "session": 1, "reason": "idle"}))
        priv.wait_log(r"ev=udp_session_end session=1 reason=\"closed by the public side\"",
                      5 * SLOW)
        # A datagram for a session that was never opened: protocol error.
        c.sendall(frame({"op": OP_UDP_DATA, "session": 7, "len": 1}, b"x"))
        self.assertTrue(harness.closed_by_peer(c, 10 * SLOW))
        priv.wait_log(r"UDP_DATA for session 7 that was never opened", 5 * SLOW)


if __name__ == "__main__":
    harness.main()
