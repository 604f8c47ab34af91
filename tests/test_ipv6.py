"""IPv6: the tunnel, the clients and the targets over ::1 (bulk with checksum,
half-close), the two families mixed (an IPv6 client to an IPv4 target and the
reverse), --bind repeated, the default dual-stack listeners, the web API over
[::1], UDP over ::1. Loopback only (127.0.0.1 and ::1)."""
import hashlib
import http.client
import json
import os
import random
import socket
import unittest

import ftplib
import io

import harness
from harness import ProxyTest, apps, recv_exact, SLOW, wait_until
from helpers import ftpd


# The public side listens on ::1 or on the wildcard here: its ports must be free
# on every address, not only on 127.0.0.1 (harness.free_port_any).
free_port = harness.free_port_any


def connect6(port, host="::1", timeout=None):
    return socket.create_connection((host, port), timeout=timeout or 10 * SLOW)


def get_list(host, port, token):
    c = http.client.HTTPConnection(host, port, timeout=10 * SLOW)
    try:
        c.request("GET", "/list", headers={"Authorization": "Bearer " + token})
        r = c.getresponse()
        return r.status, json.loads(r.read().decode())
    finally:
        c.close()


@unittest.skipUnless(harness.have_ipv6_loopback(), "no IPv6 loopback (::1) here")
class Ipv6Test(ProxyTest):
    def setUp(self):
        super().setUp()
        self.tunnel_port, self.web_port = free_port(), free_port()

    def start_private6(self, host, register=(), name="home", extra=()):
        """proxy_private dialling HOST (e.g. "[::1]:PORT"), as harness.start_private."""
        argv = [self.bin("proxy_private"), host] + list(extra) + ["--name", name, "--log-level", "debug",
                "--known-hosts", os.path.join(self.tmp, "known_hosts"), "--token", self.token]
        for r in register:
            argv += ["--register", r]
        argv += harness.EXTRA_ARGS
        return self.spawn("private-" + name, argv)

    def bulk_echo(self, port, host):
        data = random.Random(6).randbytes(harness.BULK)
        want = hashlib.sha256(data).hexdigest()
        s = connect6(port, host, timeout=60 * SLOW)
        self.addCleanup(s.close)
        n, got = harness.echo_stream(s, data, 200 * SLOW)
        self.assertEqual(n, len(data), "echoed byte count")
        self.assertEqual(got, want, "sha256 of the echoed stream differs")

    def test_core_over_ipv6_loopback(self):
        """Tunnel, client and target all on ::1: bulk echo with sha256, and a
        half-close in each direction."""
        echo = self.server(apps.EchoServer, host="::1")
        sink = self.server(apps.SinkServer, host="::1")
        greet = self.server(apps.GreetThenReadServer, host="::1")
        self.start_public(extra=["--bind", "::1"])
        pe, ps, pg = free_port(), free_port(), free_port()
        self.start_private6("[::1]:%d" % self.tunnel_port, register=[
            "echo:%d:[::1]:%d" % (pe, echo.port), "sink:%d:[::1]:%d" % (ps, sink.port),
            "greet:%d:[::1]:%d" % (pg, greet.port)])
        body = self.wait_online(apps=["echo", "sink", "greet"])
        priv = self.find(body["privates"], "home")
        self.assertTrue(priv["address"].startswith("[::1]:"), priv)
        self.assertEqual(self.find(body["apps"], "echo")["target_host"], "::1")
        self.bulk_echo(pe, "::1")
        # Half-close, client first: the sink answers after end of stream.
        data = os.urandom(1 << 20)
        with connect6(ps) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = harness.recv_all(s, limit=200).decode()
        self.assertEqual(reply, "%d %s\n" % (len(data), harness.sha256(data)))
        # Half-close, app first.
        with connect6(pg) as s:
            got = harness.recv_all(s, limit=1000)
            self.assertEqual(got, greet.greeting)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            self.assertTrue(harness.closed_by_peer(s, 15 * SLOW))
        with greet.cond:
            self.assertTrue(greet.cond.wait_for(lambda: greet.results, 15 * SLOW))
        self.assertEqual(greet.results[0], (len(data), harness.sha256(data)))
        # The client's address is logged in its usual notation.
        self.public.wait_log(r"client=\[::1\]:\d+", 10 * SLOW)

    def test_mixed_families(self):
        """A client on ::1 reaches an app whose target is IPv4, and a client on
        127.0.0.1 one whose target is ::1 (--bind given twice)."""
        echo4 = self.server(apps.EchoServer, host="127.0.0.1")
        echo6 = self.server(apps.EchoServer, host="::1")
        self.start_public(extra=["--bind", "::1"])
        p4, p6 = free_port(), free_port()
        self.start_private(register=["to4:%d:127.0.0.1:%d" % (p4, echo4.port),
                                     "to6:%d:[::1]:%d" % (p6, echo6.port)])
        self.wait_online(apps=["to4", "to6"])
        for port, host in ((p4, "::1"), (p6, "127.0.0.1"), (p4, "127.0.0.1"), (p6, "::1")):
            msg = os.urandom(5000)
            with connect6(port, host) as s:
                s.sendall(msg)
                self.assertEqual(recv_exact(s, len(msg)), msg, "%s -> port %d" % (host, port))
        self.assertEqual(echo4.accepted, 2)
        self.assertEqual(echo6.accepted, 2)
        # Both bind addresses serve the web API, [::1] included.
        st, body = get_list("::1", self.web_port, self.token)
        self.assertEqual(st, 200)
        self.assertEqual({a["name"] for a in body["apps"]}, {"to4", "to6"})

    def test_bind_only_the_given_addresses(self):
        """--bind ::1 alone: nothing answers on 127.0.0.1 (tunnel, web, app)."""
        echo = self.server(apps.EchoServer, host="::1")
        self.tunnel_port, self.web_port = free_port(), free_port()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state)
        pub = self.spawn("public", [self.bin("proxy_public"), str(self.tunnel_port),
                                    str(self.web_port), "--bind", "::1", "--state-dir", state,
                                    "--token", self.token, "--log-level", "debug"]
                         + harness.EXTRA_ARGS)
        self.public = pub
        wait_until(lambda: get_list("::1", self.web_port, self.token)[0] == 200
                   if pub.alive() else self.fail(pub.log_tail()), 20 * SLOW, "web API on [::1]")
        pub.wait_log(r"ev=ready .*bind=\[::1\]", 10 * SLOW)
        port = free_port()
        # Bare ::1, TUNNEL_PORT as its own argument.
        self.start_private6("::1", register=["e:%d:[::1]:%d" % (port, echo.port)],
                            extra=[str(self.tunnel_port)])

        def online():
            st, body = get_list("::1", self.web_port, self.token)
            apps_ = {a["name"]: a for a in body["apps"]}
            return "e" in apps_ and apps_["e"]["online"]
        wait_until(online, 20 * SLOW, "app e online")
        msg = b"x" * 1000
        with connect6(port) as s:
            s.sendall(msg)
            self.assertEqual(recv_exact(s, len(msg)), msg)
        for p in (self.tunnel_port, self.web_port, port):
            with self.assertRaises(OSError, msg="port %d answers on 127.0.0.1" % p):
                socket.create_connection(("127.0.0.1", p), timeout=2).close()

    def test_default_listens_on_both_families(self):
        """No --bind: one dual-stack socket per port; IPv4 clients are shown
        as IPv4 (not ::ffff:127.0.0.1)."""
        echo = self.server(apps.EchoServer)
        self.tunnel_port, self.web_port = free_port(), free_port()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state)
        pub = self.spawn("public", [self.bin("proxy_public"), str(self.tunnel_port),
                                    str(self.web_port), "--state-dir", state,
                                    "--token", self.token, "--log-level", "debug"]
                         + harness.EXTRA_ARGS)
        self.public = pub
        self.wait_api_up(pub)
        pub.wait_log(r"ev=ready .*bind=\[::\]\+0\.0\.0\.0", 10 * SLOW)
        self.assertEqual(get_list("::1", self.web_port, self.token)[0], 200)
        port = free_port()
        self.start_private(register=["e:%d:127.0.0.1:%d" % (port, echo.port)])
        body = self.wait_online(apps=["e"])
        self.assertTrue(self.find(body["privates"], "home")["address"].startswith("127.0.0.1:"),
                        body["privates"])
        for host in ("127.0.0.1", "::1"):
            msg = os.urandom(3000)
            with connect6(port, host) as s:
                s.sendall(msg)
                self.assertEqual(recv_exact(s, len(msg)), msg, host)
        self.assertNotIn("::ffff:", pub.log())

    def test_udp_over_ipv6(self):
        """A UDP app on ::1 (public socket, client and target all IPv6)."""
        udp = self.server(apps.UdpEchoServer, host="::1")
        self.start_public(extra=["--bind", "::1"])
        port = free_port()
        self.start_private6("[::1]:%d" % self.tunnel_port,
                            register=["u:%d:[::1]:%d/udp" % (port, udp.port)])
        self.wait_online(apps=["u"])
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(c.close)
        c.settimeout(1)
        self.assertEqual(harness.udp_ask(c, b"ping6", ("::1", port), 20 * SLOW), b"6gnip")
        app = self.find(self.list()["apps"], "u")
        self.assertGreaterEqual(app["datagrams_in"], 1, app)

    def test_bad_bind_address(self):
        """--bind takes addresses only, checked before anything starts."""
        for bad in ("nowhere", "::1::2", "[127.0.0.1]", "300.1.1.1"):
            p = self.spawn("bad", [self.bin("proxy_public"), str(free_port()), str(free_port()),
                                   "--bind", bad, "--state-dir", os.path.join(self.tmp, "s"),
                                   "--token", self.token])
            p.expect_exit = None
            wait_until(lambda: not p.alive(), 10 * SLOW, "proxy_public to refuse --bind %s" % bad)
            self.assertNotEqual(p.popen.returncode, 0)
            self.assertIn("bind address", p.log())


    def spawn_public_default(self, extra=()):
        """proxy_public without --bind: dual-stack listeners."""
        self.tunnel_port, self.web_port = free_port(), free_port()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state, exist_ok=True)
        pub = self.spawn("public", [self.bin("proxy_public"), str(self.tunnel_port),
                                    str(self.web_port), "--state-dir", state,
                                    "--token", self.token, "--log-level", "debug"]
                         + list(extra) + harness.EXTRA_ARGS)
        self.public = pub
        self.wait_api_up(pub)
        return pub

    def test_config_file_bind_list(self):
        """The config key takes a list (commas, or one line each); --bind on the
        command line replaces the file's."""
        conf = os.path.join(self.tmp, "public.conf")
        self.tunnel_port, self.web_port = free_port(), free_port()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state)
        with open(conf, "w") as f:
            f.write("tunnel-port = %d\nweb-port = %d\nstate-dir = %s\nbind = 127.0.0.1, ::1\n"
                    % (self.tunnel_port, self.web_port, state))
        p = self.spawn("public", [self.bin("proxy_public"), "--config", conf, "--token",
                                  self.token] + harness.EXTRA_ARGS)
        self.public = p
        self.wait_api_up(p)
        p.wait_log(r"ev=ready .*bind=127\.0\.0\.1,\[::1\]", 10 * SLOW)
        self.assertEqual(get_list("::1", self.web_port, self.token)[0], 200)
        p.stop()
        p2 = self.spawn("public", [self.bin("proxy_public"), "--config", conf, "--token",
                                   self.token, "--bind", "::1"] + harness.EXTRA_ARGS)
        self.public = p2
        wait_until(lambda: get_list("::1", self.web_port, self.token)[0] == 200
                   if p2.alive() else self.fail(p2.log_tail()), 20 * SLOW, "web API on [::1]")
        p2.wait_log(r"ev=ready .*bind=\[::1\] ", 10 * SLOW)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.web_port), timeout=2).close()

    @unittest.skipUnless(ftpd.have_vsftpd(), "vsftpd is not installed (tools/deps.sh)")
    def test_ftp_through_dual_stack_listeners(self):
        """An FTP app on the default dual-stack socket: an IPv4 client (PASV,
        EPSV, PORT) and an IPv6 one (EPSV, EPRT) move files both ways; the
        data ports listen where each client came."""
        vs = self.server(ftpd.Vsftpd, os.path.join(self.tmp, "ftp"))
        blob = os.urandom(300000)
        vs.put("pub/blob.bin", blob)
        lo, hi = harness.free_port_range(8)
        self.spawn_public_default(extra=["--ftp-ports", "%d-%d" % (lo, hi)])
        port = free_port()
        self.start_private(register=["ftp:%d:127.0.0.1:%d/ftp" % (port, vs.port)])
        self.wait_online(apps=["ftp"])
        for host, modes in (("127.0.0.1", ("pasv", "epsv", "port")), ("::1", ("epsv", "eprt"))):
            f = ftplib.FTP()
            f.connect(host, port, timeout=20 * SLOW)
            self.addCleanup(f.close)
            f.login()
            for mode in modes:
                f.set_pasv(mode in ("pasv", "epsv"))
                # ftplib uses EPSV/EPRT for IPv6 and PASV/PORT for IPv4; force EPSV on v4.
                if mode == "epsv" and host == "127.0.0.1":
                    resp = f.sendcmd("EPSV")
                    dport = int(resp.split("|")[3])
                    with socket.create_connection((host, dport), timeout=10 * SLOW) as d:
                        f.sendcmd("TYPE I")
                        f.putcmd("RETR pub/blob.bin")
                        self.assertTrue(f.getresp().startswith("150"))
                        got = harness.recv_all(d)
                    self.assertTrue(f.voidresp().startswith("226"))
                else:
                    out = io.BytesIO()
                    f.retrbinary("RETR pub/blob.bin", out.write)
                    got = out.getvalue()
                self.assertEqual(got, blob, "%s %s" % (host, mode))
                up = os.urandom(50000)
                name = "up/%s-%s.bin" % (host.replace(":", "_"), mode)
                f.storbinary("STOR " + name, io.BytesIO(up))
                self.assertEqual(vs.read(name), up, "%s %s upload" % (host, mode))
            f.quit()
        self.assertNotIn("::ffff:", self.public.log())


if __name__ == "__main__":
    harness.main()
