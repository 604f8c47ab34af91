"""Failure handling: refused targets, offline apps, wrong token, restarts."""
import json
import os
import re
import socket
import threading
import time

import harness
from harness import ProxyTest, apps, connect, free_port, SLOW


def assert_client_closed(test, port, what):
    """A client connecting to port is refused or closed within a bounded wait."""
    try:
        s = connect(port, timeout=5 * SLOW)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    with s:
        try:
            s.sendall(b"hello?")
        except OSError:
            return "reset"
        test.assertTrue(harness.closed_by_peer(s, 5 * SLOW),
                        "%s: client on port %d still open after %ss"
                        % (what, port, 5 * SLOW))
    return "closed"


class FailureTest(ProxyTest):
    def test_target_refused(self):
        """An app whose target port is closed: the client is closed promptly, and
        the tunnel keeps serving a working app."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        dead_port, bad_pub, good_pub = free_port(), free_port(), free_port()
        self.start_private(register=["dead:%d:127.0.0.1:%d" % (bad_pub, dead_port),
                                     "echo:%d:127.0.0.1:%d" % (good_pub, echo.port)])
        self.wait_online(apps=["dead", "echo"])
        for _ in range(3):
            # The app's port listens (its private is online); the client may be
            # reset during connect or closed right after.
            how = assert_client_closed(self, bad_pub, "app with a refused target")
            self.assertNotEqual(how, "refused", "the app's public port is not listening")
        self.echo_roundtrip(good_pub)
        self.assertTrue(self.public.alive() and self.procs[-1].alive())

    def test_app_offline_private_killed(self):
        """The private is killed: a client of its app is refused or closed promptly.
        A killed process's kernel ends its connections with a FIN, or with a
        reset when bytes it had not read were waiting: a reset looks like the
        network's, so the public side then waits for a resume for the grace
        period (3 s here) before it closes clients, as an outage would."""
        port = self.setup_echo(public_extra=["--resume-grace", "3"])
        self.echo_roundtrip(port)
        priv = [p for p in self.procs if p.name == "private-home"][0]
        priv.sigkill()
        self.wait_offline()
        app = self.find(self.list()["apps"], "echo")
        self.assertIs(app["online"], False, app)
        for _ in range(3):
            assert_client_closed(self, port, "app offline (private killed)")
        self.assertTrue(self.public.alive())

    def test_app_offline_private_never_connected(self):
        """After a public restart the app is restored but its private has not
        connected: a client is refused or closed promptly."""
        port = self.setup_echo(register_via="api")
        priv = [p for p in self.procs if p.name == "private-home"][0]
        priv.stop()
        self.assertEqual(self.public.stop(), 0, "public exit code after SIGTERM")
        self.start_public()
        app = self.find(self.list()["apps"], "echo")
        self.assertIsNotNone(app, "app not restored from apps.json")
        self.assertIs(app["online"], False, app)
        for _ in range(3):
            assert_client_closed(self, port, "app offline (private never connected)")

    def test_handshake_order_with_waiting_clients(self):
        """Clients that connect to an app's port while its private's HELLO is being
        handled (new app: listener opened, state saved, WELCOME not yet sent) must
        not make the public send BUILD_CONNECTION before WELCOME (PROTOCOL.md,
        Handshake 3). A hand-written private checks the first frame each round."""
        self.start_public()
        echo = self.server(apps.EchoServer)
        stop = threading.Event()
        held = []
        target = {"port": None}

        def hammer():
            while not stop.is_set():
                try:
                    c = socket.create_connection(("127.0.0.1", target["port"]), timeout=1)
                    held.append(c)
                    if len(held) > 200:
                        held.pop(0).close()
                except (OSError, TypeError):
                    time.sleep(0.0005)

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        self.addCleanup(lambda: [c.close() for c in list(held)])
        self.addCleanup(stop.set)
        for t in threads:
            t.start()
        for i in range(20):
            app_port = free_port()
            target["port"] = app_port
            hello = {"op": harness.OP_HELLO, "version": 1, "token": self.token,
                     "name": "race", "window": 1 << 20,
                     "apps": [{"name": "r%d" % i, "public_port": app_port,
                               "target_host": "127.0.0.1", "target_port": echo.port}]}
            s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
            with s:
                s.sendall(harness.frame(hello))
                f = harness.read_frame(s)
                self.assertIsNotNone(f, "round %d: no answer to HELLO" % i)
                self.assertEqual(f[0].get("op"), harness.OP_WELCOME,
                                 "round %d: first frame after HELLO is %r, not WELCOME"
                                 % (i, f[0]))
            self.wait_offline(private="race")
        stop.set()
        for t in threads:
            t.join(5)

    def test_wrong_token(self):
        """A private with a wrong token is refused and says why; API calls with a
        wrong or missing token get 401 with a JSON error."""
        self.start_public()
        priv = self.start_private(token="not-the-token-" + self.token[:8])
        priv.expect_exit = None  # it may give up (any code) or keep retrying
        m = priv.wait_log(r"(?im)^.*lvl=error.*token.*$", 15 * SLOW)
        line = m.group(0)
        self.assertNotIn(self.token, line, "a log line shows the real token")
        pub = self.public.wait_log(r"(?im)^.*(lvl=(warn|error|info)).*token.*$", 15 * SLOW)
        self.assertNotIn(self.token, pub.group(0), "public logs the token")
        self.assertNotIn("not-the-token", self.public.output(), "public logs the offered token")
        body = self.list()
        pv = self.find(body["privates"], "home")
        self.assertTrue(pv is None or pv["online"] is False,
                        "a private with a wrong token shows online: %s" % json.dumps(body))
        # The private's HELLO was one wrong try; after a few more, the address
        # is rate limited (429) instead of 401 -- still a refusal with JSON.
        tries = 1
        for auth in (None, "Bearer wrong", "Bearer " + self.token[:-1], "Basic " + self.token,
                     "Bearer " + self.token + "x", "Bearer"):
            for method, path, b in (("GET", "/list", None),
                                    ("POST", "/register", {"name": "x", "public_port": 1}),
                                    ("POST", "/unregister", {"name": "x"})):
                st, resp = self.api(method, path, b, token=None, auth_header=auth)
                allowed = (401,) if tries < 5 else (401, 429)
                tries += 1
                self.assertIn(st, allowed, "%s %s with Authorization %r -> %s %r"
                              % (method, path, auth, st, resp))
                self.assertIsInstance(resp, dict, "401 body is not JSON: %r" % resp)
                self.assertIsInstance(resp.get("error"), str, resp)
        self.assertTrue(self.public.alive())

    def test_private_killed_and_restarted(self):
        """SIGKILL the private, start it again: service back, registrations intact."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        cli_port, api_port = free_port(), free_port()
        spec = "cli:%d:127.0.0.1:%d" % (cli_port, echo.port)
        priv = self.start_private(register=[spec])
        self.wait_online(apps=["cli"])
        self.register("viaapi", api_port, echo.port)
        self.wait_online(apps=["cli", "viaapi"])
        self.echo_roundtrip(cli_port)
        self.echo_roundtrip(api_port)
        before = {a["name"]: a for a in self.list()["apps"]}
        priv.sigkill()
        self.wait_offline()
        self.start_private(register=[spec])
        self.wait_online(apps=["cli", "viaapi"])
        after = {a["name"]: a for a in self.list()["apps"]}
        self.assertEqual(sorted(after), sorted(before))
        for name in before:
            for k in ("public_port", "target_host", "target_port", "private"):
                self.assertEqual(after[name][k], before[name][k], "%s.%s changed" % (name, k))
        self.echo_roundtrip(cli_port)
        self.echo_roundtrip(api_port)

    def test_public_restarted(self):
        """SIGTERM the public, start it again with the same state dir: the API
        registrations come back from apps.json and work once the private is back."""
        echo = self.server(apps.EchoServer)
        self.start_public()
        priv = self.start_private()
        self.wait_online()
        ports = [free_port(), free_port()]
        self.register("one", ports[0], echo.port)
        self.register("two", ports[1], echo.port, private=None)
        self.wait_online(apps=["one", "two"])
        for p in ports:
            self.echo_roundtrip(p)
        self.assertEqual(self.public.stop(), 0, "public exit code after SIGTERM")
        path = os.path.join(self.state_dir, "apps.json")
        self.assertTrue(os.path.exists(path), "no %s after registering" % path)
        with open(path) as f:
            text = f.read()
        self.assertIn('"one"', text)
        self.assertIn('"two"', text)
        self.assertNotIn(self.token, text, "apps.json holds the token")
        self.start_public()  # same ports, same state dir
        # The private reconnects by itself (backoff at most 30 s + jitter).
        self.wait_online(apps=["one", "two"], timeout=60 * SLOW)
        self.assertTrue(priv.alive(), "private exited while the public was down")
        self.assertEqual(len(re.findall(r"ev=tunnel_up", priv.output())), 2,
                         "private should log tunnel_up twice (start, reconnect)")
        for p in ports:
            self.echo_roundtrip(p)
        # And the restored registrations can be managed as before.
        st, _ = self.api("POST", "/unregister", {"name": "one"})
        self.assertEqual(st, 200)


if __name__ == "__main__":
    harness.main()
