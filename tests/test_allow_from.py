"""Per-app source allowlists ("allow_from"): two loopback addresses as two
clients, 127.0.0.2 allowed and 127.0.0.3 not, for TCP and UDP apps; the
refusals are counted (/list, /metrics) and logged; bad lists get 400; the
list is kept in the state directory and given by proxy_private's
--register too."""
import json
import os
import socket

import harness
from harness import ProxyTest, SLOW, apps, free_port, recv_exact, wait_until

ALLOW = ["127.0.0.2/32", "192.0.2.0/24", "2001:db8::/32"]



class AllowFromTest(ProxyTest):
    def test_tcp_allowed_and_refused(self):
        """TCP: 127.0.0.2 is served, 127.0.0.3 is closed at accept (the app
        never sees it), counted in /list and /metrics, and logged."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        self.start_private()
        self.wait_online()
        port = free_port()
        st, body = self.api("POST", "/register", {
            "name": "e", "public_port": port, "target_host": "127.0.0.1",
            "target_port": echo.port, "private": "home", "allow_from": ALLOW})
        self.assertEqual(st, 201, body)
        self.wait_online(apps=["e"])
        with harness.connect(port, source="127.0.0.2") as s:
            s.sendall(b"hello")
            self.assertEqual(recv_exact(s, 5), b"hello")
        for _ in range(3):
            with harness.connect(port, source="127.0.0.3") as s:
                self.assertTrue(harness.closed_by_peer(s, 10 * SLOW), "127.0.0.3 not closed")
        self.assertEqual(echo.accepted, 1, "a refused client reached the app")
        app = self.find(self.list()["apps"], "e")
        self.assertEqual(app["allow_from"], ALLOW, app)
        self.assertEqual(app["refused_sources"], 3, app)
        st, metrics = self.api("GET", "/metrics")
        self.assertIn('nat_app_source_refused_total{app="e"} 3', metrics)
        self.public.wait_log(r"ev=client_not_allowed app=e client=127\.0\.0\.3:\d+", 5 * SLOW)
        # Kept across a restart of the public side.
        with open(os.path.join(self.state_dir, "apps.json")) as f:
            saved = self.find(json.load(f)["apps"], "e")
        self.assertEqual(saved["allow_from"], ALLOW)
        self.public.stop()
        self.start_public()
        self.wait_online(apps=["e"])
        with harness.connect(port, source="127.0.0.3") as s:
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW))
        with harness.connect(port, source="127.0.0.2") as s:
            s.sendall(b"again")
            self.assertEqual(recv_exact(s, 5), b"again")

    def test_udp_allowed_and_dropped(self):
        """UDP: 127.0.0.2's datagrams get answers, 127.0.0.3's are dropped
        and counted; --register gives the list (allow_from=A+B)."""
        udp = self.server(apps.UdpEchoServer)
        self.start_public()
        port = free_port()
        self.start_private(register=["u:%d:127.0.0.1:%d/udp,allow_from=127.0.0.2/32+10.0.0.0/8"
                                     % (port, udp.port)])
        body = self.wait_online(apps=["u"])
        self.assertEqual(self.find(body["apps"], "u")["allow_from"],
                         ["127.0.0.2/32", "10.0.0.0/8"])
        good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        good.bind(("127.0.0.2", 0))
        good.settimeout(1)
        bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bad.bind(("127.0.0.3", 0))
        bad.settimeout(0.5)
        self.addCleanup(good.close)
        self.addCleanup(bad.close)
        self.assertEqual(harness.udp_ask(good, b"abc", ("127.0.0.1", port), 20 * SLOW), b"cba")
        for _ in range(4):
            bad.sendto(b"xyz", ("127.0.0.1", port))
        wait_until(lambda: self.find(self.list()["apps"], "u")["refused_sources"] >= 4,
                   10 * SLOW, "4 datagrams of 127.0.0.3 counted")
        with self.assertRaises(socket.timeout):
            bad.recvfrom(100)
        self.assertNotIn(("127.0.0.3", bad.getsockname()[1]), udp.peers)
        app = self.find(self.list()["apps"], "u")
        self.assertEqual(app["active_sessions"], 1, app)

    def test_bad_lists_get_400(self):
        """Each entry is checked: not an address, a bad prefix, host bits set,
        too many entries, not an array."""
        self.start_public()
        self.start_private()
        self.wait_online()
        cases = [("nowhere/8", "is not ADDRESS/PREFIX"),
                 ("192.0.2.0/33", "bad prefix length"),
                 ("2001:db8::/129", "bad prefix length"),
                 ("192.0.2.1/24", "bits set past"),
                 ("192.0.2.0/", "bad prefix length"),
                 ("192.0.2.0/-1", "bad prefix length"),
                 (5, "is not a string"),
                 (["192.0.2.%d/32" % i for i in range(65)], "at most 64"),
                 ("not-a-list", "must be an array")]
        for entry, why in cases:
            allow = entry if isinstance(entry, list) or entry == "not-a-list" else [entry]
            st, body = self.api("POST", "/register", {
                "name": "x", "public_port": free_port(), "target_host": "127.0.0.1",
                "target_port": 80, "private": "home", "allow_from": allow})
            self.assertEqual(st, 400, (entry, body))
            self.assertIn(why, body["error"], entry)
        self.assertIsNone(self.find(self.list()["apps"], "x"))
        p = self.spawn("bad", [self.bin("proxy_private"), "127.0.0.1", "1", "--token", "x",
                               "--register", "x:1234:127.0.0.1:80,allow_from=10.0.0.1/8"])
        p.expect_exit = None
        wait_until(lambda: not p.alive(), 10 * SLOW, "proxy_private to refuse the --register")
        self.assertNotEqual(p.popen.returncode, 0)
        self.assertIn("allow_from", p.log())

    def test_ipv4_mapped_clients_match_ipv4_entries(self):
        """With the default dual-stack listener an IPv4 client arrives as
        ::ffff:127.0.0.2 and must match 127.0.0.2/32 (and an IPv6 client
        an IPv6 entry)."""
        echo = self.server(apps.EchoServer)
        self.tunnel_port = harness.free_port_any()  # the wildcard: free everywhere
        self.web_port = harness.free_port_any()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state)
        self.state_dir = state
        self.public = self.spawn("public", [self.bin("proxy_public"), str(self.tunnel_port),
                                            str(self.web_port), "--state-dir", state, "--token",
                                            self.token, "--log-level", "debug"]
                                 + harness.EXTRA_ARGS)
        self.wait_api_up(self.public)
        port = harness.free_port_any()
        self.start_private(register=["e:%d:127.0.0.1:%d,allow_from=127.0.0.2/32+::1/128"
                                     % (port, echo.port)])
        self.wait_online(apps=["e"])
        with harness.connect(port, source="127.0.0.2") as s:
            s.sendall(b"ok")
            self.assertEqual(recv_exact(s, 2), b"ok")
        with harness.connect(port, source="127.0.0.3") as s:
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW))
        try:
            s6 = socket.create_connection(("::1", port), timeout=10 * SLOW)
        except OSError:
            return  # no IPv6 loopback here
        with s6:
            s6.sendall(b"v6")
            self.assertEqual(recv_exact(s6, 2), b"v6")
        self.public.wait_log(r"ev=client_not_allowed app=e client=127\.0\.0\.3:", 5 * SLOW)


if __name__ == "__main__":
    harness.main()
