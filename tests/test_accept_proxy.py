"""proxy_public behind a load balancer (--accept-proxy-from): a real HAProxy
(mode tcp, send-proxy and send-proxy-v2, its connections from 127.0.0.3)
in front of an app port and the web port; the client, bound to 127.0.0.5,
is the address the app's allow_from, /connections, the app's own PROXY
header (proxy_protocol) and the web port's logs and rate limits see.
Raw sockets check the rest: a listed source without a valid header is
closed and counted; an unlisted source's "PROXY ..." line is its own data
(no spoofing); bad values are refused at start.

The harness talks to the API from 127.0.0.1, which is never listed here, so
its requests need no header. Nothing here measures time."""
import os
import re
import shutil
import socket
import struct
import subprocess
import unittest

import harness
from harness import ProxyTest, SLOW, apps, free_port, recv_exact, wait_until
from test_proxy_protocol import RecordingServer, V2_SIG

HAPROXY = "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
NEED_HAPROXY = ("needs HAProxy at /usr/sbin/haproxy (Debian's haproxy; "
                "tools/deps.sh test installs it)")
BALANCER = "127.0.0.3"      # HAProxy's source towards proxy_public: the listed one
CLIENT = "127.0.0.5"        # the real client, as HAProxy sees it


class HAProxy:
    """HAProxy in the foreground with its own config: one tcp frontend per
    (name, backend port, send-proxy option); frontends[name] is its port."""

    def __init__(self, test, routes):
        self.frontends = {}
        conf = os.path.join(test.tmp, "haproxy.cfg")
        text = ["global", "    maxconn 256", "defaults", "    mode tcp",
                "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s"]
        for name, port, opt in routes:
            fport = free_port()
            self.frontends[name] = fport
            text += ["frontend f_%s" % name, "    bind 127.0.0.1:%d" % fport,
                     "    default_backend b_%s" % name, "backend b_%s" % name,
                     "    server s1 127.0.0.1:%d %s source %s" % (port, opt, BALANCER)]
        with open(conf, "w") as f:
            f.write("\n".join(text) + "\n")
        check = subprocess.run([HAPROXY, "-c", "-f", conf], capture_output=True, timeout=30)
        test.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.proc = test.spawn("haproxy", [HAPROXY, "-db", "-f", conf])
        self.proc.expect_exit = None  # it ends by SIGTERM itself
        for port in self.frontends.values():
            wait_until(lambda p=port: _listening(p), 10 * SLOW, "HAProxy on port %d" % port)


def _listening(port):
    """port has a listener on 127.0.0.1 (read from /proc: a probe connection
    would go through HAProxy to the app)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, st = line.split()[1], line.split()[3]
            if st == "0A" and local == "0100007F:%04X" % port:
                return True
    return False



def http_get(port, source, path="/list", token=None, prefix=b""):
    """A whole GET over a raw socket from source (prefix first): the status
    (0: closed or reset without an answer) and the answer's bytes."""
    with harness.connect(port, source=source) as s:
        req = b"GET %s HTTP/1.1\r\nHost: x\r\n" % path.encode()
        if token:
            req += b"Authorization: Bearer %s\r\n" % token.encode()
        s.sendall(prefix + req + b"Connection: close\r\n\r\n")
        try:
            data = harness.recv_all(s)
        except ConnectionResetError:  # closed with our request unread
            data = b""

    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else 0), data


class AcceptProxyTest(ProxyTest):
    def start(self, allow_from=None, proxy_protocol=None, app_cls=apps.EchoServer):
        """public (--accept-proxy-from BALANCER) + private + app "e"; its port."""
        self.app = self.server(app_cls)
        self.start_public(extra=["--accept-proxy-from", BALANCER + "/32",
                                 "--accept-proxy-from", "2001:db8::/32"])
        self.start_private()
        self.wait_online()
        self.app_port = free_port()
        body = {"name": "e", "public_port": self.app_port, "target_host": "127.0.0.1",
                "target_port": self.app.port, "private": "home"}
        if allow_from:
            body["allow_from"] = allow_from
        if proxy_protocol:
            body["proxy_protocol"] = proxy_protocol
        st, resp = self.api("POST", "/register", body)
        self.assertEqual(st, 201, resp)
        self.wait_online(apps=["e"])
        return self.app_port

    def clients(self):
        st, body = self.api("GET", "/connections")
        self.assertEqual(st, 200, body)
        return [c["client"] for c in body["connections"]]

    def metric(self, name):
        st, text = self.api("GET", "/metrics")
        m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
        self.assertIsNotNone(m, "%s not in /metrics" % name)
        return int(m.group(1))

    @unittest.skipUnless(HAPROXY, NEED_HAPROXY)
    def test_haproxy_v1_and_v2_to_a_tcp_app(self):
        """Through send-proxy and send-proxy-v2 the app works, /connections
        shows 127.0.0.5 (HAProxy's client), and the app's own PROXY header
        (proxy_protocol=2) names 127.0.0.5 too, not HAProxy's 127.0.0.3."""
        port = self.start(proxy_protocol=2, app_cls=RecordingServer)
        ha = HAProxy(self, [("v1", port, "send-proxy"), ("v2", port, "send-proxy-v2")])
        for n, name in enumerate(("v1", "v2")):
            with harness.connect(ha.frontends[name], source=CLIENT) as s:
                s.sendall(b"hello %s\n" % name.encode())
                self.assertEqual(recv_exact(s, 9), b"hello %s\n" % name.encode())
                cport = s.getsockname()[1]
                self.assertIn("%s:%d" % (CLIENT, cport), self.clients())
            with self.app.cond:
                stream = bytes(self.app.streams[n])
            want = (V2_SIG + bytes([0x21, 0x11, 0, 12]) + socket.inet_aton(CLIENT)
                    + socket.inet_aton("127.0.0.1") + struct.pack(">HH", cport, port))
            self.assertTrue(stream.startswith(want), (name, stream))
        self.public.wait_log(r"ev=accept_proxy_from net=127\.0\.0\.3/32", 5 * SLOW)

    @unittest.skipUnless(HAPROXY, NEED_HAPROXY)
    def test_allow_from_judges_the_real_client(self):
        """allow_from 127.0.0.6/32 and 127.0.0.3/32 (HAProxy's own address):
        the client 127.0.0.5 behind HAProxy is refused and counted, 127.0.0.6
        is served."""
        port = self.start(allow_from=["127.0.0.6/32", BALANCER + "/32"])
        ha = HAProxy(self, [("v1", port, "send-proxy")])
        with harness.connect(ha.frontends["v1"], source=CLIENT) as s:
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW), "127.0.0.5 not closed")
        self.public.wait_log(r"ev=client_not_allowed app=e client=127\.0\.0\.5:\d+", 5 * SLOW)
        with harness.connect(ha.frontends["v1"], source="127.0.0.6") as s:
            s.sendall(b"ok")
            self.assertEqual(recv_exact(s, 2), b"ok")
        self.assertEqual(self.find(self.list()["apps"], "e")["refused_sources"], 1)
        self.assertEqual(self.app.accepted, 1, "the refused client reached the app")

    @unittest.skipUnless(HAPROXY, NEED_HAPROXY)
    def test_web_port_through_haproxy(self):
        """GET /list through HAProxy works and a wrong token is logged for
        127.0.0.5. All of loopback is one rate-limit group, so a header
        naming 192.0.2.7 (sent from the listed address) shows whose budget
        wrong tokens spend: 192.0.2.7 gets 429 while 127.0.0.1 with the
        right token still gets 200."""
        self.start()
        ha = HAProxy(self, [("web", self.web_port, "send-proxy-v2")])
        st, data = http_get(ha.frontends["web"], CLIENT, token=self.token)
        self.assertEqual(st, 200, data)
        self.assertIn(b'"apps"', data)
        st, data = http_get(ha.frontends["web"], CLIENT, token="wrong")
        self.assertEqual(st, 401, data)
        self.public.wait_log(r"ev=web_unauthorized client=127\.0\.0\.5 ", 5 * SLOW)
        hdr = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 %d\r\n" % self.web_port
        for _ in range(40):
            st, data = http_get(self.web_port, BALANCER, token="wrong", prefix=hdr)
            if st == 429:
                break
            self.assertEqual(st, 401, data)
        self.assertEqual(st, 429, "no 429 for 192.0.2.7")
        self.public.wait_log(r"ev=web_rate_limited client=192\.0\.2\.7 ", 5 * SLOW)
        st, data = http_get(self.web_port, "127.0.0.1", token=self.token)
        self.assertEqual(st, 200, data)

    def test_listed_source_needs_a_valid_header(self):
        """From the listed address: garbage and silence (5 s) are closed
        before the app sees anything, also on the web port, counted in
        /metrics and logged; a v2 LOCAL header (a health check) means the
        connection's own address."""
        port = self.start()
        with harness.connect(port, source=BALANCER) as s:
            s.sendall(b"hello, no header\r\n")
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW), "garbage not closed")
        with harness.connect(port, source=BALANCER) as s:
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW), "silence not closed")
        st, data = http_get(self.web_port, BALANCER, token=self.token)
        self.assertEqual(st, 0, data)
        self.assertEqual(self.app.accepted, 0, "a refused connection reached the app")
        wait_until(lambda: self.metric("nat_proxy_header_refused_total") == 3, 10 * SLOW,
                   "3 refusals counted")
        self.public.wait_log(r'ev=client_refused app=e client=127\.0\.0\.3:\d+ '
                             r'reason="not a valid PROXY header"', 5 * SLOW)
        self.public.wait_log(r'ev=client_refused app=e client=127\.0\.0\.3:\d+ '
                             r'reason="no PROXY header in time"', 5 * SLOW)
        self.public.wait_log(r'ev=proxy_header_refused port=web client=127\.0\.0\.3:\d+', 5 * SLOW)
        local = V2_SIG + bytes([0x20, 0x00, 0, 0])
        with harness.connect(port, source=BALANCER) as s:
            s.sendall(local + b"abc")
            self.assertEqual(recv_exact(s, 3), b"abc")
            self.assertIn("%s:%d" % (BALANCER, s.getsockname()[1]), self.clients())

    def test_unlisted_source_cannot_spoof(self):
        """From 127.0.0.1 (not listed) a PROXY line is the client's data: the
        app receives it as sent, /connections shows 127.0.0.1; the web port
        answers it 400."""
        port = self.start()
        line = b"PROXY TCP4 198.51.100.99 127.0.0.1 1111 2222\r\n"
        with harness.connect(port, source="127.0.0.1") as s:
            s.sendall(line + b"data")
            self.assertEqual(recv_exact(s, len(line) + 4), line + b"data")
            clients = self.clients()
            self.assertIn("127.0.0.1:%d" % s.getsockname()[1], clients)
            self.assertFalse([c for c in clients if c.startswith("198.51.100.99")], clients)
        st, data = http_get(self.web_port, "127.0.0.1", token=self.token, prefix=line)
        self.assertEqual(st, 400, data)
        self.assertEqual(self.metric("nat_proxy_header_refused_total"), 0)

    def test_bad_values_refused_at_start(self):
        """Not a network, host bits set, a bad prefix, more than 16."""
        cases = [(["nowhere"], "is not an IPv4 or IPv6 network"),
                 (["127.0.0.1/24"], "bits set past"),
                 (["2001:db8::/129"], "bad prefix length"),
                 (["127.0.0.%d" % i for i in range(1, 18)], "at most 16")]
        for values, why in cases:
            argv = [self.bin("proxy_public"), str(free_port()), str(free_port()),
                    "--state-dir", os.path.join(self.tmp, "s"), "--token", "x"]
            for v in values:
                argv += ["--accept-proxy-from", v]
            p = subprocess.run(argv, capture_output=True, timeout=20 * SLOW,
                               env=dict(os.environ, **harness.SAN_ENV))
            err = p.stderr.decode()
            self.assertEqual(p.returncode, 2, (values, err))
            self.assertIn("--accept-proxy-from", err)
            self.assertIn(why, err)


if __name__ == "__main__":
    harness.main()
