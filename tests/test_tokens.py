"""Sharing a server: scoped tokens, live connections, kick and disable.

The admin token (the one of today) creates scoped tokens; a private proxy
with such a token connects only under the names of its scope and registers
apps only on its ports, at most max_apps of them, with at most max_conns
connections; on the API the token sees and manages only its own apps.
Tokens are kept hashed; a revoked token's tunnel is closed at once and
cannot come back. /connections lists each open client connection with its
real address and closes one on request; a private can be kicked (and
refused for a while); an app can be disabled and enabled again.
"""
import json
import os
import socket
import time
import unittest

import harness
from harness import ProxyTest, SLOW, free_port, free_port_range, wait_until, connect, recv_exact
from helpers import apps


def client_from(src_ip, port, timeout=10):
    """A TCP connection to 127.0.0.1:port from the loopback address src_ip."""
    s = socket.socket()
    s.settimeout(timeout * SLOW)
    s.bind((src_ip, 0))
    s.connect(("127.0.0.1", port))
    return s


class TokenTest(ProxyTest):

    def make_token(self, label, privates, ports, **kw):
        body = {"label": label, "privates": privates, "ports": ports}
        body.update(kw)
        st, resp = self.api("POST", "/tokens", body)
        self.assertEqual(st, 201, resp)
        self.assertEqual(len(resp["token"]), 64, resp)
        return resp

    def test_scoped_token_registers_inside_its_scope_only(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        lo, hi = free_port_range(4)
        tok = self.make_token("alice", ["alice"], "%d-%d" % (lo, lo + 1), max_apps=2)
        # The token is shown once: never in the list, never in the state dir.
        st, listed = self.api("GET", "/tokens")
        self.assertEqual(st, 200)
        self.assertEqual([t["id"] for t in listed["tokens"]], [tok["id"]])
        self.assertNotIn("token", listed["tokens"][0])
        self.assertNotIn("sha256", listed["tokens"][0])
        for f in os.listdir(self.state_dir):
            with open(os.path.join(self.state_dir, f), "rb") as fh:
                self.assertNotIn(tok["token"].encode(), fh.read(), f)
        # Inside the range from proxy_private (HELLO); outside it refused with the reason.
        inside = "in:%d:127.0.0.1:%d" % (lo, echo.port)
        outside = "out:%d:127.0.0.1:%d" % (hi, echo.port)
        priv = self.start_private(name="alice", token=tok["token"], register=[inside, outside])
        self.wait_online(private="alice", apps=["in"])
        priv.wait_log(r"out.*outside the ports of this token", 10 * SLOW)
        self.echo_roundtrip(lo)
        # On the API: its own register (201 inside, 403 outside, with the reason).
        body = {"name": "api-in", "public_port": lo + 1, "target_host": "127.0.0.1",
                "target_port": echo.port}
        st, resp = self.api("POST", "/register", body, token=tok["token"])
        self.assertEqual(st, 201, resp)
        self.assertEqual(resp["app"]["owner"], tok["id"])
        # Who registered each app is logged: the token, and the private's HELLO.
        self.public.wait_log(r"ev=app_registered app=api-in .* by=token:%s\(alice\)" % tok["id"],
                             5 * SLOW)
        self.public.wait_log(r"ev=app_registered app=in .* by=private:alice", 5 * SLOW)
        body.update(name="api-out", public_port=hi)
        st, resp = self.api("POST", "/register", body, token=tok["token"])
        self.assertEqual(st, 403, resp)
        self.assertIn("outside the ports of this token (%d-%d)" % (lo, lo + 1), resp["error"])
        # max_apps: its two apps are all it may have.
        st, resp = self.api("POST", "/unregister", {"name": "api-in"}, token=tok["token"])
        self.assertEqual(st, 200, resp)
        st, resp = self.api("POST", "/register", dict(body, name="third", public_port=lo + 1),
                            token=tok["token"])
        self.assertEqual(st, 201, resp)
        # (in, third): a third one is over max_apps even on a port of its range.
        st, resp = self.api("POST", "/unregister", {"name": "third"}, token=tok["token"])
        self.assertEqual(st, 200)
        # The admin's own app, and another private's: invisible and untouchable to it.
        other = self.start_private(name="bob")
        self.wait_online(private="bob")
        self.register("bobs", hi - 1, echo.port, private="bob")
        st, mine = self.api("GET", "/list", token=tok["token"])
        self.assertEqual(st, 200, mine)
        self.assertEqual(sorted(a["name"] for a in mine["apps"]), ["in"])
        self.assertEqual([p["name"] for p in mine["privates"]], ["alice"])
        self.assertFalse(mine["admin"])
        self.assertEqual(mine["token"]["label"], "alice")
        st, resp = self.api("POST", "/unregister", {"name": "bobs"}, token=tok["token"])
        self.assertEqual(st, 403, resp)
        st, resp = self.api("POST", "/disable", {"name": "bobs"}, token=tok["token"])
        self.assertEqual(st, 403, resp)
        body.update(name="steal", public_port=lo + 1, private="bob")
        st, resp = self.api("POST", "/register", body, token=tok["token"])
        self.assertEqual(st, 403, resp)
        self.assertIn("only the private proxies alice", resp["error"])
        # Admin-only endpoints.
        for method, path, b in (("GET", "/tokens", None), ("GET", "/metrics", None),
                                ("POST", "/tokens", {"label": "x", "privates": ["x"],
                                                     "ports": "1-2"}),
                                ("POST", "/tokens/revoke", {"id": tok["id"]})):
            st, resp = self.api(method, path, b, token=tok["token"])
            self.assertEqual(st, 403, (path, resp))
        # The admin sees everything, with the owner's label.
        full = self.list()
        app = self.find(full["apps"], "in")
        self.assertEqual((app["owner"], app["owner_label"]), (tok["id"], "alice"))
        self.assertTrue(full["admin"])
        self.assertTrue(other.alive())

    def test_name_outside_scope_is_refused_for_good(self):
        self.start_public()
        tok = self.make_token("carol", ["carol-*"], "20000-20010")
        ok = self.start_private(name="carol-nas", token=tok["token"])
        self.wait_online(private="carol-nas")
        bad = self.start_private(name="dave", token=tok["token"])
        bad.expect_exit = 3
        wait_until(lambda: not bad.alive(), 20 * SLOW, "proxy_private with a foreign name exits")
        self.assertEqual(bad.popen.returncode, 3, bad.log_tail())
        self.assertRegex(bad.log(), r"code=name_not_allowed.*may connect only as carol-\*")
        self.assertTrue(ok.alive())

    def test_revoked_token_drops_its_tunnel_and_stays_out(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        port = free_port()
        tok = self.make_token("eve", ["eve"], str(port))
        priv = self.start_private(name="eve", token=tok["token"],
                                  register=["e:%d:127.0.0.1:%d" % (port, echo.port)])
        self.wait_online(private="eve", apps=["e"])
        held = connect(port)
        self.addCleanup(held.close)
        held.sendall(b"ping")
        self.assertEqual(recv_exact(held, 4), b"ping")
        st, resp = self.api("POST", "/tokens/revoke", {"id": tok["id"]})
        self.assertEqual(st, 200, resp)
        # Closed by the revocation itself, not by a later check.
        self.assertEqual(resp["tunnels_closed"], 1)
        self.wait_offline(private="eve", timeout=5 * SLOW)
        # Its client is cut, its private cannot come back (bad token: exits 3).
        self.assertTrue(harness.closed_by_peer(held, 10 * SLOW))
        priv.expect_exit = 3
        wait_until(lambda: not priv.alive(), 60 * SLOW, "the revoked private gives up")
        self.assertEqual(priv.popen.returncode, 3, priv.log_tail())
        self.assertIn("code=bad_token", priv.log())
        self.public.wait_log(r"ev=token_revoked id=%s tunnels_closed=1 by=admin" % tok["id"],
                             5 * SLOW)
        st, resp = self.api("GET", "/list", token=tok["token"])
        self.assertEqual(st, 401, resp)

    def test_tokens_survive_a_restart_and_bad_requests_are_refused(self):
        self.start_public()
        for body, what in (({"privates": ["a"], "ports": "1-2"}, "label"),
                           ({"label": "a", "privates": [], "ports": "1-2"}, "privates"),
                           ({"label": "a", "privates": ["a b"], "ports": "1-2"}, "privates"),
                           ({"label": "a", "privates": ["a"], "ports": "2-1"}, "ports"),
                           ({"label": "a", "privates": ["a"], "ports": " 1"}, "ports"),
                           ({"label": "a", "privates": ["a"], "ports": "1", "max_apps": 0},
                            "max_apps"),
                           ({"label": "a", "privates": ["a"], "ports": "1", "max_conns": "9"},
                            "max_conns"),
                           ({"label": "a\nb", "privates": ["a"], "ports": "1"}, "label")):
            st, resp = self.api("POST", "/tokens", body)
            self.assertEqual(st, 400, (body, resp))
            self.assertIn("'%s'" % what, resp["error"])
        tok = self.make_token("frank", ["frank"], "20000-20001")
        st, resp = self.api("POST", "/tokens/revoke", {"id": "000000000000"})
        self.assertEqual(st, 404, resp)
        self.public.stop()
        self.start_public()
        st, resp = self.api("GET", "/list", token=tok["token"])
        self.assertEqual(st, 200, resp)
        self.assertEqual(resp["token"]["id"], tok["id"])
        with open(os.path.join(self.state_dir, "tokens.json")) as f:
            stored = json.load(f)
        self.assertEqual(len(stored["tokens"][0]["sha256"]), 64)
        self.assertEqual(os.stat(os.path.join(self.state_dir, "tokens.json")).st_mode & 0o077, 0)

    def test_max_conns_of_a_token(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        port = free_port()
        tok = self.make_token("gina", ["gina"], str(port), max_conns=2)
        self.start_private(name="gina", token=tok["token"],
                           register=["g:%d:127.0.0.1:%d" % (port, echo.port)])
        self.wait_online(private="gina", apps=["g"])
        held = []
        for _ in range(2):
            c = connect(port)
            self.addCleanup(c.close)
            c.sendall(b"x")
            self.assertEqual(recv_exact(c, 1), b"x")
            held.append(c)
        third = connect(port)
        self.addCleanup(third.close)
        self.assertTrue(harness.closed_by_peer(third, 10 * SLOW), "a third connection was served")
        self.public.wait_log(r"its max_conns", 5 * SLOW)


class ConnectionsTest(ProxyTest):

    def test_connections_show_the_client_and_close_on_request(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        port = free_port()
        self.start_private(register=["echo:%d:127.0.0.1:%d" % (port, echo.port)])
        self.wait_online(apps=["echo"])
        c = client_from("127.0.0.2", port)
        self.addCleanup(c.close)
        c.sendall(b"hello")
        self.assertEqual(recv_exact(c, 5), b"hello")
        src = "127.0.0.2:%d" % c.getsockname()[1]
        st, body = self.api("GET", "/connections")
        self.assertEqual(st, 200, body)
        mine = [x for x in body["connections"] if x["client"] == src]
        self.assertEqual(len(mine), 1, body)
        conn = mine[0]
        self.assertEqual((conn["app"], conn["private"]), ("echo", "home"))
        self.assertEqual((conn["bytes_in"], conn["bytes_out"]), (5, 5))
        self.assertRegex(conn["since"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(body["total"], 1)
        st, resp = self.api("POST", "/connections/close", {"private": "home", "id": conn["id"]})
        self.assertEqual(st, 200, resp)
        self.assertTrue(harness.closed_by_peer(c, 10 * SLOW), "the client was not closed")
        st, resp = self.api("POST", "/connections/close", {"private": "home", "id": conn["id"]})
        self.assertEqual(st, 404, resp)
        self.public.wait_log(r"ev=connection_closed private=home conn=%d app=echo by=admin"
                             % conn["id"], 5 * SLOW)
        wait_until(lambda: self.api("GET", "/connections")[1]["total"] == 0, 10 * SLOW,
                   "the closed connection leaves the list")

    @unittest.skipUnless(harness.have_ipv6_loopback(), "no IPv6 loopback (::1) here")
    def test_an_ipv6_client_is_shown_in_its_notation(self):
        echo = self.server(apps.EchoServer)
        self.start_public(extra=["--bind", "::1"])
        port = harness.free_port_any()
        self.start_private(register=["echo:%d:127.0.0.1:%d" % (port, echo.port)])
        self.wait_online(apps=["echo"])
        c = socket.create_connection(("::1", port), timeout=10 * SLOW)
        self.addCleanup(c.close)
        c.sendall(b"v6")
        self.assertEqual(recv_exact(c, 2), b"v6")
        st, body = self.api("GET", "/connections")
        self.assertEqual(st, 200, body)
        self.assertEqual([x["client"] for x in body["connections"]],
                         ["[::1]:%d" % c.getsockname()[1]], body)

    def test_a_token_sees_and_closes_only_its_own_connections(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        p1, p2 = free_port(), free_port()
        st, tok = self.api("POST", "/tokens", {"label": "h", "privates": ["h"], "ports": str(p1)})
        self.assertEqual(st, 201, tok)
        self.start_private(name="h", token=tok["token"],
                           register=["hx:%d:127.0.0.1:%d" % (p1, echo.port)])
        self.start_private(register=["adm:%d:127.0.0.1:%d" % (p2, echo.port)])
        self.wait_online(private="h", apps=["hx"])
        self.wait_online(apps=["adm"])
        a, b = connect(p1), connect(p2)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        for s in (a, b):
            s.sendall(b"1")
            self.assertEqual(recv_exact(s, 1), b"1")
        st, body = self.api("GET", "/connections", token=tok["token"])
        self.assertEqual(st, 200, body)
        self.assertEqual([x["app"] for x in body["connections"]], ["hx"])
        st, full = self.api("GET", "/connections")
        other = [x for x in full["connections"] if x["app"] == "adm"][0]
        st, resp = self.api("POST", "/connections/close",
                            {"private": "home", "id": other["id"]}, token=tok["token"])
        self.assertEqual(st, 403, resp)
        b.sendall(b"2")
        self.assertEqual(recv_exact(b, 1), b"2")


class KickDisableTest(ProxyTest):

    def test_kick_refuses_for_a_while_then_lets_it_back(self):
        self.start_public()
        priv = self.start_private()
        self.wait_online()
        st, resp = self.api("POST", "/kick", {"private": "home", "refuse_for": 3})
        self.assertEqual(st, 200, resp)
        self.wait_offline()
        priv.wait_log(r"code=kicked", 10 * SLOW)
        self.public.wait_log(r"ev=private_kicked name=home refuse_s=3 online=yes by=admin",
                             5 * SLOW)
        pv = self.find(self.list()["privates"], "home")
        self.assertGreater(pv.get("refused_for", 0), 0, pv)
        # It keeps trying and comes back by itself once the time is up.
        self.wait_online(timeout=40 * SLOW)
        self.assertTrue(priv.alive())
        st, resp = self.api("POST", "/kick", {"private": "nobody"})
        self.assertEqual(st, 404, resp)
        st, resp = self.api("POST", "/kick", {"private": "home", "refuse_for": -1})
        self.assertEqual(st, 400, resp)

    def test_disable_and_enable_an_app(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        port = free_port()
        udp_port = free_port()
        udp_echo = self.server(apps.UdpEchoServer)
        self.start_private(register=["echo:%d:127.0.0.1:%d" % (port, echo.port),
                                     "uecho:%d:127.0.0.1:%d/udp" % (udp_port, udp_echo.port)])
        self.wait_online(apps=["echo", "uecho"])
        held = connect(port)
        self.addCleanup(held.close)
        for name in ("echo", "uecho"):
            st, resp = self.api("POST", "/disable", {"name": name})
            self.assertEqual(st, 200, resp)

        def refused():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, 10 * SLOW, "the disabled app's port refuses connections")
        app = self.find(self.list()["apps"], "echo")
        self.assertTrue(app.get("disabled"), app)
        self.assertFalse(app["online"], app)
        # An open connection stays.
        held.sendall(b"still")
        self.assertEqual(recv_exact(held, 5), b"still")
        # UDP: no answer while disabled.
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(u.close)
        u.settimeout(1)
        time.sleep(0.3)
        u.sendto(b"q", ("127.0.0.1", udp_port))
        with self.assertRaises((socket.timeout, ConnectionRefusedError)):
            u.recvfrom(100)
        self.public.wait_log(r"ev=app_disabled app=echo by=admin", 5 * SLOW)
        # Kept across a restart of the public side.
        self.public.stop()
        self.start_public()
        self.assertTrue(self.find(self.list()["apps"], "echo").get("disabled"))
        for name in ("echo", "uecho"):
            st, resp = self.api("POST", "/enable", {"name": name})
            self.assertEqual(st, 200, resp)
        self.wait_online(apps=["echo", "uecho"], timeout=40 * SLOW)
        self.echo_roundtrip(port)

        self.assertEqual(harness.udp_ask(u, b"back", ("127.0.0.1", udp_port), 20 * SLOW,
                                         refused_ok=True), b"kcab", "the enabled UDP app answers (reversed, as the echo does)")
        self.assertNotIn("disabled", self.find(self.list()["apps"], "echo"))
        st, resp = self.api("POST", "/disable", {"name": "nope"})
        self.assertEqual(st, 404, resp)


if __name__ == "__main__":
    harness.main()
