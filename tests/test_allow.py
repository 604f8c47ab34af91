"""The private side's allowlist (--allow): BUILD_CONNECTION may only dial what it
permits. Default: loopback and the --register targets; with --allow rules, only
those (plus --register targets). A refused target closes the client and says why
in the private's log; the tunnel keeps serving allowed apps. The private tells
the public side its rules (HELLO, APPS), so the API refuses what the home side
would refuse."""
import os
import signal

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
        refused by the API (422, naming the --allow rule that would permit
        them), as the private has told the public side its rules."""
        allowed = self.server(apps.EchoServer)
        other_addr = self.server(apps.EchoServer, host="127.0.0.2")
        self.start_public()
        denied_port = free_port()
        self.start_private(extra=["--allow", "127.0.0.1:%d" % allowed.port])
        self.wait_online()
        ok_pub = free_port()
        self.register("ok", ok_pub, allowed.port)
        for name, host, port in (("otheraddr", "127.0.0.2", other_addr.port),
                                 ("otherport", "127.0.0.1", denied_port),
                                 ("byname", "localhost", denied_port)):
            resp = self.register(name, free_port(), port, target_host=host, expect=422)
            self.assertIn("private proxy 'home' would refuse", resp["error"])
            self.assertIn("--allow %s:%d" % (host, port), resp["error"])
        names = [a["name"] for a in self.list()["apps"]]
        self.assertEqual(names, ["ok"], "a refused registration was kept")
        self.wait_online(apps=["ok"])
        self.echo_roundtrip(ok_pub)
        self.assertEqual(other_addr.accepted, 0, "a refused target was dialled anyway")

    def test_registered_while_offline_is_shown_and_refused_at_accept(self):
        """An app registered while its private is offline cannot be judged then
        (201). Once the private is back, /list says the home side refuses it
        (home_refuses, with the rule), its clients are closed at accept and
        counted, and the private dials nothing. A reload that adds the rule
        (config file, SIGHUP) tells the public side: the app works."""
        echo = self.server(apps.EchoServer, host="127.0.0.2")
        self.start_public()
        conf = os.path.join(self.tmp, "private.conf")
        with open(conf, "w") as f:
            f.write("allow = 127.0.0.1:1\n")
        priv = self.start_private(extra=["--config", conf])
        self.wait_online()
        priv.stop()
        self.wait_offline()
        pub = free_port()
        self.register("late", pub, echo.port, target_host="127.0.0.2")
        priv = self.start_private(extra=["--config", conf])
        self.wait_online(apps=["late"])
        app = self.find(self.list()["apps"], "late")
        self.assertIn("--allow 127.0.0.2:%d" % echo.port, app.get("home_refuses", ""), app)
        self.closed_promptly(pub, "refused at accept")
        self.public.wait_log(r"ev=client_refused app=late .*--allow rules do not permit",
                             10 * SLOW)
        harness.wait_until(lambda: self.find(self.list()["apps"], "late")
                           ["refused_connections"] >= 1, 10 * SLOW, "the refusal counted")
        self.assertEqual(echo.accepted, 0, "a refused target was dialled anyway")
        with open(conf, "w") as f:
            f.write("allow = 127.0.0.1:1\nallow = 127.0.0.2:%d\n" % echo.port)
        priv.popen.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: "home_refuses" not in self.find(self.list()["apps"], "late"),
                           10 * SLOW, "the reloaded rules reach the public side")
        self.echo_roundtrip(pub)

    def test_refusal_reason_reaches_the_public_log_whole(self):
        """A name the public side cannot judge (a CIDR rule might admit it once
        resolved) is registered; the home side refuses it when dialling, and
        the public log shows its whole reason."""
        self.start_public()
        self.start_private(extra=["--allow", "192.0.2.0/24:1-65535"])
        self.wait_online()
        pub, target = free_port(), free_port()
        self.register("named", pub, target, target_host="localhost")
        self.wait_online(apps=["named"])
        self.closed_promptly(pub, "refused at home")
        self.public.wait_log(r'ev=conn_failed .*reason="target not allowed: add --allow '
                             r'localhost:%d \(or a CIDR rule\) to proxy_private"' % target,
                             10 * SLOW)

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
