"""The PROXY protocol to the app (protocol version 6): a real nginx at home
with `listen ... proxy_protocol` logs the client's address (127.0.0.2, or
::1), not the private side's (127.0.0.1), for versions 1 and 2; the header
is written once per connection, also when the tunnel breaks and resumes;
BUILD_CONNECTION carries client and server; a private older than version 6
is refused clearly for such an app while its other apps work."""
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest

import harness
from harness import (ProxyTest, SLOW, free_port, frame, read_frame, recv_exact, wait_until,
                     OP_HELLO, OP_WELCOME)
from harness import OP_BUILD as OP_BUILD_CONNECTION
from helpers import apps
from test_resume import CutRelay

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                  else None)
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class Nginx:
    """nginx on 127.0.0.1:port with proxy_protocol, its own prefix, config,
    pid and log files in dir; the access log line is
    'pp=<proxy_protocol_addr>:<port> server=<addr>:<port> remote=<remote_addr> <request>'."""

    def __init__(self, test, dir_):
        self.port = free_port()
        self.dir = dir_
        os.makedirs(os.path.join(dir_, "logs"), exist_ok=True)
        self.access = os.path.join(dir_, "logs", "access.log")
        conf = os.path.join(dir_, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/logs/error.log info;
events { worker_connections 64; }
http {
    log_format pp 'pp=$proxy_protocol_addr:$proxy_protocol_port '
                  'server=$proxy_protocol_server_addr:$proxy_protocol_server_port '
                  'remote=$remote_addr "$request"';
    access_log %(d)s/logs/access.log pp;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    server {
        listen 127.0.0.1:%(p)d proxy_protocol;
        location / { return 200 "hello from nginx\\n"; }
    }
}
""" % {"d": dir_, "p": self.port})
        self.proc = test.spawn("nginx", [NGINX, "-p", dir_, "-c", conf, "-e",
                                         os.path.join(dir_, "logs", "error.log")])
        self.proc.expect_exit = None  # nginx leaves on SIGTERM its own way
        wait_until(self._up, 20 * SLOW, "nginx listening on %d" % self.port)

    def _up(self):
        if not self.proc.alive():
            raise AssertionError("nginx exited: %s" % self.proc.log_tail())
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def lines(self):
        try:
            with open(self.access) as f:
                return [line for line in f.read().splitlines() if "GET /" in line]
        except FileNotFoundError:
            return []


def http_get(port, host="127.0.0.1", source=None, path="/"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10 * SLOW)
    try:
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        src_port = s.getsockname()[1]
        s.sendall(b"GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path.encode())
        return harness.recv_all(s, limit=100000), src_port
    finally:
        s.close()


class RecordingServer(apps.AppServer):
    """Records every connection's bytes; after the first line (a v1 header,
    or 16 + len bytes of a v2 one) it echoes what follows."""

    def __init__(self, *a, **kw):
        self.streams = []
        super().__init__(*a, **kw)

    def _run(self, c):
        rec = bytearray()
        with self.cond:
            self.streams.append(rec)
        header_done = None
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                with self.cond:
                    rec += d
                    self.cond.notify_all()
                if header_done is None:
                    if rec.startswith(b"PROXY ") and b"\r\n" in rec:
                        header_done = rec.index(b"\r\n") + 2
                    elif rec.startswith(V2_SIG) and len(rec) >= 16:
                        header_done = 16 + struct.unpack(">H", rec[14:16])[0]
                    if header_done is not None:
                        c.sendall(bytes(rec[header_done:]))
                else:
                    c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()


@unittest.skipUnless(NGINX, "needs nginx (Debian's nginx-light; tools/deps.sh test installs it)")
class NginxTest(ProxyTest):
    def setup_nginx(self, version, pub_extra=()):
        self.nginx = Nginx(self, os.path.join(self.tmp, "nginx"))
        if pub_extra:  # also on ::1: ports free on every address
            self.tunnel_port, self.web_port = harness.free_port_any(), harness.free_port_any()
        self.start_public(extra=list(pub_extra))
        self.app_port = harness.free_port_any() if pub_extra else free_port()
        self.start_private(register=["web:%d:127.0.0.1:%d,proxy_protocol=%d"
                                     % (self.app_port, self.nginx.port, version)])
        body = self.wait_online(apps=["web"])
        self.assertEqual(self.find(body["apps"], "web")["proxy_protocol"], version)

    def check_line(self, client_ip, client_port, server_ip):
        wait_until(lambda: self.nginx.lines(), 10 * SLOW, "nginx's access log line")
        line = self.nginx.lines()[-1]
        m = re.match(r"pp=(\S+):(\d+) server=(\S+):(\d+) remote=(\S+) ", line)
        self.assertTrue(m, line)
        self.assertEqual((m.group(1), int(m.group(2))), (client_ip, client_port), line)
        self.assertEqual((m.group(3), int(m.group(4))), (server_ip, self.app_port), line)
        self.assertEqual(m.group(5), "127.0.0.1", "nginx's own peer is the private side")

    def test_v1_to_nginx(self):
        """Version 1 (text): nginx logs 127.0.0.2, the client's address."""
        self.setup_nginx(1)
        body, src = http_get(self.app_port, source="127.0.0.2")
        self.assertIn(b"hello from nginx", body)
        self.check_line("127.0.0.2", src, "127.0.0.1")

    def test_v2_to_nginx(self):
        """Version 2 (binary): the same."""
        self.setup_nginx(2)
        body, src = http_get(self.app_port, source="127.0.0.2")
        self.assertIn(b"hello from nginx", body)
        self.check_line("127.0.0.2", src, "127.0.0.1")

    @unittest.skipUnless(harness.have_ipv6_loopback(), "no IPv6 loopback here")
    def test_v2_ipv6_client_to_nginx(self):
        """Version 2 with a client on ::1: nginx (on IPv4) logs ::1."""
        self.setup_nginx(2, pub_extra=["--bind", "::1"])
        body, src = http_get(self.app_port, host="::1")
        self.assertIn(b"hello from nginx", body)
        self.check_line("::1", src, "::1")

    @unittest.skipUnless(harness.have_ipv6_loopback(), "no IPv6 loopback here")
    def test_v1_ipv6_client_to_nginx(self):
        """Version 1 with a client on ::1: a TCP6 line."""
        self.setup_nginx(1, pub_extra=["--bind", "::1"])
        body, src = http_get(self.app_port, host="::1")
        self.assertIn(b"hello from nginx", body)
        self.check_line("::1", src, "::1")


class HeaderTest(ProxyTest):
    def test_header_bytes_and_resume(self):
        """The exact headers a target gets, one per connection, before the
        client's bytes; a tunnel reset (resume) does not send it again, and a
        client that arrives during the outage gets exactly one too."""
        rec = self.server(RecordingServer)
        self.start_public()
        relay = CutRelay(self.tunnel_port)
        self.addCleanup(relay.close)
        p1, p2 = free_port(), free_port()
        priv = self.start_private(register=[
            "v1:%d:127.0.0.1:%d,proxy_protocol=1" % (p1, rec.port),
            "v2:%d:127.0.0.1:%d,proxy_protocol=2,allow_from=127.0.0.0/8" % (p2, rec.port)],
            port=relay.port)
        self.wait_online(apps=["v1", "v2"])
        socks = []
        for port in (p1, p2):
            s = socket.socket()
            s.settimeout(20 * SLOW)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
            self.addCleanup(s.close)
            s.sendall(b"first\n")
            self.assertEqual(recv_exact(s, 6), b"first\n")
        relay.cut()
        priv.wait_log(r"ev=tunnel_resumed_link", 20 * SLOW)
        for s in socks:
            s.sendall(b"second\n")
            self.assertEqual(recv_exact(s, 7), b"second\n")
        with rec.cond:
            streams = [bytes(x) for x in rec.streams]
        self.assertEqual(len(streams), 2, streams)
        v1 = next(x for x in streams if x.startswith(b"PROXY "))
        v2 = next(x for x in streams if x.startswith(V2_SIG))
        c1, c2 = (s.getsockname()[1] for s in socks)
        self.assertEqual(v1, b"PROXY TCP4 127.0.0.2 127.0.0.1 %d %d\r\nfirst\nsecond\n" % (c1, p1))
        want2 = (V2_SIG + bytes([0x21, 0x11, 0, 12]) + socket.inet_aton("127.0.0.2")
                 + socket.inet_aton("127.0.0.1") + struct.pack(">HH", c2, p2)
                 + b"first\nsecond\n")
        self.assertEqual(v2, want2)
        # A client that comes while the tunnel is down gets its header once.
        relay.stall()
        relay.cut()
        self.public.wait_log(r"ev=tunnel_suspended", 30 * SLOW)
        late = socket.socket()
        late.settimeout(60 * SLOW)
        late.bind(("127.0.0.2", 0))
        late.connect(("127.0.0.1", p1))
        self.addCleanup(late.close)
        late.sendall(b"late\n")
        time.sleep(1)
        relay.restore()
        self.assertEqual(recv_exact(late, 5), b"late\n")
        with rec.cond:
            streams = [bytes(x) for x in rec.streams]
        self.assertEqual(streams[2], b"PROXY TCP4 127.0.0.2 127.0.0.1 %d %d\r\nlate\n"
                         % (late.getsockname()[1], p1))

    def test_build_connection_members(self):
        """A version 6 private gets client and server in BUILD_CONNECTION, and
        proxy_protocol for such an app only."""
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        pp, plain = free_port(), free_port()
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 6, "token": self.token,
                         "name": "v6", "window": 1 << 20,
                         "apps": [{"name": "pp", "public_port": pp, "target_host": "127.0.0.1",
                                   "target_port": 9, "proxy_protocol": 2},
                                  {"name": "plain", "public_port": plain,
                                   "target_host": "127.0.0.1", "target_port": 9}]}))
        h, _ = read_frame(s)
        self.assertEqual((h["op"], h["version"]), (OP_WELCOME, 6), h)
        self.assertTrue(all(a["ok"] for a in h["apps"]), h)
        self.wait_online(private="v6", apps=["pp", "plain"])
        for port, want_pp in ((pp, 2), (plain, None)):
            c = socket.socket()
            c.bind(("127.0.0.2", 0))
            c.connect(("127.0.0.1", port))
            self.addCleanup(c.close)
            while True:
                b, _ = read_frame(s)
                if b["op"] == OP_BUILD_CONNECTION:
                    break
            self.assertEqual(b["client"], "127.0.0.2:%d" % c.getsockname()[1], b)
            self.assertEqual(b["server"], "127.0.0.1:%d" % port, b)
            self.assertEqual(b.get("proxy_protocol"), want_pp, b)

    def test_old_private_is_refused_clearly(self):
        """A private of protocol version 5: a proxy_protocol app is refused
        (WELCOME and POST /register say why), its other apps work and get no
        client/server members; a proxy_protocol app registered while it was
        away refuses its clients at accept, with the reason logged."""
        echo_port = 9  # never dialled: the fake private only reads the frames
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        tcp = free_port()
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 5, "token": self.token,
                         "name": "old", "window": 1 << 20,
                         "apps": [{"name": "pp", "public_port": free_port(),
                                   "target_host": "127.0.0.1", "target_port": echo_port,
                                   "proxy_protocol": 1},
                                  {"name": "t", "public_port": tcp,
                                   "target_host": "127.0.0.1", "target_port": echo_port}]}))
        h, _ = read_frame(s)
        self.assertEqual((h["op"], h["version"]), (OP_WELCOME, 5), h)
        res = {a["name"]: a for a in h["apps"]}
        self.assertFalse(res["pp"]["ok"], h)
        self.assertIn("proxy_protocol needs protocol version 6", res["pp"]["error"])
        self.assertTrue(res["t"]["ok"], h)
        self.wait_online(private="old", apps=["t"])
        st, body = self.api("POST", "/register", {
            "name": "pp2", "public_port": free_port(), "target_host": "127.0.0.1",
            "target_port": echo_port, "private": "old", "proxy_protocol": 2})
        self.assertEqual(st, 409, body)
        self.assertIn("speaks protocol version 5, which has no PROXY protocol", body["error"])
        # The TCP app works, and its BUILD_CONNECTION is a version 5 one.
        c = harness.connect(tcp)
        self.addCleanup(c.close)
        while True:
            b, _ = read_frame(s)
            if b["op"] == OP_BUILD_CONNECTION:
                break
        self.assertNotIn("client", b)
        self.assertNotIn("proxy_protocol", b)
        # Registered while the old private is away, refused when it is back.
        s.close()
        self.wait_offline(private="old")
        late = free_port()
        st, body = self.api("POST", "/register", {
            "name": "pp3", "public_port": late, "target_host": "127.0.0.1",
            "target_port": echo_port, "private": "old", "proxy_protocol": 1})
        self.assertEqual(st, 201, body)
        s2 = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s2.close)
        s2.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 5, "token": self.token,
                          "name": "old", "window": 1 << 20}))
        h, _ = read_frame(s2)
        self.assertEqual(h["op"], OP_WELCOME, h)
        self.wait_online(private="old", apps=["pp3"])
        with harness.connect(late) as c3:
            self.assertTrue(harness.closed_by_peer(c3, 10 * SLOW))
        self.public.wait_log(r"ev=client_refused app=pp3 .*without the PROXY protocol", 5 * SLOW)

    def test_bad_requests(self):
        """proxy_protocol is 0, 1 or 2, for TCP apps; --register checks it too."""
        self.start_public()
        self.start_private()
        self.wait_online()
        for body, why in (({"proxy_protocol": 3}, "'proxy_protocol' must be 0"),
                          ({"proxy_protocol": "1"}, "'proxy_protocol' must be 0"),
                          ({"proxy_protocol": 1, "protocol": "udp"}, "for TCP apps")):
            b = {"name": "x", "public_port": free_port(), "target_host": "127.0.0.1",
                 "target_port": 80, "private": "home"}
            b.update(body)
            st, resp = self.api("POST", "/register", b)
            self.assertEqual(st, 400, resp)
            self.assertIn(why, resp["error"])
        p = self.spawn("bad", [self.bin("proxy_private"), "127.0.0.1", "1", "--token", "x",
                               "--register", "x:1234:127.0.0.1:80/udp,proxy_protocol=1"])
        p.expect_exit = None
        wait_until(lambda: not p.alive(), 10 * SLOW, "proxy_private to refuse the --register")
        self.assertNotEqual(p.popen.returncode, 0)
        self.assertIn("proxy_protocol", p.log())


if __name__ == "__main__":
    harness.main()
