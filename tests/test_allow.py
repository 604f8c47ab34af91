"""The private side's allowlist (--allow): BUILD_CONNECTION may only dial what it
permits. Default: loopback and the --register targets; with --allow rules, only
those (plus --register targets). A refused target closes the client and says why
in the private's log; the tunnel keeps serving allowed apps."""
import harness
from harness import ProxyTest, free_port, SLOW
from helpers import apps


class AllowTest(ProxyTest):
    def closed_promptly(self, port, what):
        try:
            s = harness.connect(port, timeout=5 * SLOW)
        except (ConnectionRefusedError, ConnectionResetError):
            return
        with s:
            try:
                s.sendall(b"hello?")
            except OSError:
                return
            self.assertTrue(harness.closed_by_peer(s, 10 * SLOW),
                            "%s: client on port %d still open" % (what, port))

    def test_default_allows_loopback_from_the_api(self):
        """No --allow: an app registered through the API to a loopback target works."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        self.start_private()
        self.wait_online()
        port = free_port()
        self.register("web", port, echo.port)
        self.wait_online(apps=["web"])
        self.echo_roundtrip(port)

    def test_rules_restrict_targets(self):
        """--allow 127.0.0.1:PORT: that target works; the same port on 127.0.0.2
        (another address, not in the rules) and another port on 127.0.0.1 are
        refused; a CIDR rule admits 127.0.0.2 for a port range."""
        allowed = self.server(apps.EchoServer)
        other_addr = self.server(apps.EchoServer, host="127.0.0.2")
        self.start_public()
        denied_port = free_port()
        self.start_private(extra=["--allow", "127.0.0.1:%d" % allowed.port])
        self.wait_online()
        ok_pub, bad_addr_pub, bad_port_pub = free_port(), free_port(), free_port()
        self.register("ok", ok_pub, allowed.port)
        self.register("otheraddr", bad_addr_pub, other_addr.port, target_host="127.0.0.2")
        self.register("otherport", bad_port_pub, denied_port)
        self.wait_online(apps=["ok", "otheraddr", "otherport"])
        self.echo_roundtrip(ok_pub)
        self.closed_promptly(bad_addr_pub, "127.0.0.2 not allowed")
        self.closed_promptly(bad_port_pub, "port not allowed")
        priv = [p for p in self.procs if p.name == "private-home"][0]
        priv.wait_log(r"ev=dial_failed.*127\.0\.0\.2.*not allowed", 10 * SLOW)
        self.assertEqual(other_addr.accepted, 0, "a refused target was dialled anyway")
        # The tunnel still serves the allowed app.
        self.echo_roundtrip(ok_pub)

    def test_cidr_rule(self):
        echo = self.server(apps.EchoServer, host="127.0.0.2")
        self.start_public()
        self.start_private(extra=["--allow", "127.0.0.0/30:%d-%d" % (echo.port, echo.port)])
        self.wait_online()
        port = free_port()
        self.register("cidr", port, echo.port, target_host="127.0.0.2")
        self.wait_online(apps=["cidr"])
        self.echo_roundtrip(port)

    def test_register_targets_stay_allowed(self):
        """--register targets are allowed even when --allow names something else."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        port = free_port()
        self.start_private(register=["reg:%d:127.0.0.1:%d" % (port, echo.port)],
                           extra=["--allow", "127.0.0.1:1"])
        self.wait_online(apps=["reg"])
        self.echo_roundtrip(port)

    def test_bad_rule_is_refused_at_start(self):
        self.start_public()
        for rule in ("nonsense", "192.0.2.0/33:80", "198.51.100.0/24:0", "host:80-70", "[::1]:x"):
            p = self.start_private(extra=["--allow", rule])
            p.expect_exit = None
            harness.wait_until(lambda: not p.alive(), 10 * SLOW, "private exits on bad --allow")
            self.assertNotEqual(p.popen.returncode, 0)
            self.assertIn("--allow", p.output())


if __name__ == "__main__":
    harness.main()
