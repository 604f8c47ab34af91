"""HTTP API on the web port (docs/API.md) and --register on the private side."""
import socket

import harness
from harness import ProxyTest, apps, connect, free_port, SLOW

APP_FIELDS = ("name", "public_port", "target_host", "target_port", "private", "online",
              "active_connections", "total_connections", "bytes_in", "bytes_out")
PRIVATE_FIELDS = ("name", "online", "address", "connected_since")


class ApiTest(ProxyTest):
    def setUp(self):
        super().setUp()
        self.echo = self.server(apps.EchoServer)
        self.start_public()
        self.priv = self.start_private()
        self.wait_online()

    def body(self, **kw):
        b = {"name": "web", "public_port": free_port(), "target_host": "127.0.0.1",
             "target_port": self.echo.port, "private": "home"}
        for k, v in kw.items():
            if v is DELETE:
                b.pop(k, None)
            else:
                b[k] = v
        return b

    def expect_error(self, status, path, body=None, raw=None, what=""):
        st, resp = self.api("POST", path, body, raw_body=raw)
        self.assertEqual(st, status, "%s: POST %s %r -> %s %r" % (what, path,
                                                                  body if raw is None else raw,
                                                                  st, resp))
        self.assertIsInstance(resp, dict, "%s: error body is not a JSON object: %r" % (what, resp))
        self.assertIsInstance(resp.get("error"), str, "%s: no error sentence: %r" % (what, resp))
        self.assertTrue(resp["error"].strip(), what)
        return resp

    def test_register_list_unregister(self):
        port = free_port()
        st, resp = self.api("POST", "/register", self.body(name="web", public_port=port))
        self.assertEqual(st, 201, resp)
        app = resp["app"]
        for k in APP_FIELDS:
            self.assertIn(k, app, "201 answer lacks %r: %r" % (k, app))
        self.assertEqual((app["name"], app["public_port"], app["target_host"],
                          app["target_port"], app["private"]),
                         ("web", port, "127.0.0.1", self.echo.port, "home"))
        body = self.wait_online(apps=["web"])
        listed = self.find(body["apps"], "web")
        for k in APP_FIELDS:
            self.assertIn(k, listed)
        pv = self.find(body["privates"], "home")
        for k in PRIVATE_FIELDS:
            self.assertIn(k, pv)
        self.assertTrue(pv["address"].startswith("127.0.0.1:"), pv)
        self.assertRegex(pv["connected_since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        data = b"x" * 5000
        self.echo_roundtrip(port, data)
        listed = self.find(self.list()["apps"], "web")
        self.assertGreaterEqual(listed["total_connections"], 1, listed)
        harness.wait_until(lambda: self.find(self.list()["apps"], "web")["bytes_in"] >= 5000
                           and self.find(self.list()["apps"], "web")["bytes_out"] >= 5000,
                           10 * SLOW, "bytes_in/bytes_out counted")
        st, resp = self.api("POST", "/unregister", {"name": "web"})
        self.assertEqual((st, resp), (200, {"ok": True}))
        self.assertIsNone(self.find(self.list()["apps"], "web"))
        # The listener is closed at once.
        with self.assertRaises(ConnectionRefusedError):
            connect(port).close()
        # The name and the port can be used again.
        st, resp = self.api("POST", "/register", self.body(name="web", public_port=port))
        self.assertEqual(st, 201, resp)
        self.wait_online(apps=["web"])
        self.echo_roundtrip(port)

    def test_bad_fields_400(self):
        long_host = "a" * 254
        cases = [
            ("missing name", self.body(name=DELETE)),
            ("empty name", self.body(name="")),
            ("name with space", self.body(name="a b")),
            ("name with slash", self.body(name="a/b")),
            ("name too long", self.body(name="n" * 65)),
            ("name not a string", self.body(name=5)),
            ("missing public_port", self.body(public_port=DELETE)),
            ("public_port 0", self.body(public_port=0)),
            ("public_port 65536", self.body(public_port=65536)),
            ("public_port -1", self.body(public_port=-1)),
            ("public_port string", self.body(public_port="8080")),
            ("public_port float", self.body(public_port=8080.5)),
            ("public_port = tunnel port", self.body(public_port=self.tunnel_port)),
            ("public_port = web port", self.body(public_port=self.web_port)),
            ("missing target_host", self.body(target_host=DELETE)),
            ("empty target_host", self.body(target_host="")),
            ("target_host too long", self.body(target_host=long_host)),
            ("missing target_port", self.body(target_port=DELETE)),
            ("target_port 0", self.body(target_port=0)),
            ("target_port 70000", self.body(target_port=70000)),
            ("unknown private", self.body(private="nobody")),
            ("private not a string", self.body(private=1)),
        ]
        for what, b in cases:
            self.expect_error(400, "/register", b, what=what)
        for what, raw in (("not JSON", b"{name"), ("JSON array", b"[1,2]"),
                          ("JSON string", b'"x"'), ("empty body", b""),
                          ("trailing garbage", b'{"name":"a"} x')):
            self.expect_error(400, "/register", raw=raw, what=what)
            self.expect_error(400, "/unregister", raw=raw, what=what)
        self.expect_error(400, "/unregister", {"name": 3}, what="unregister name not a string")
        self.expect_error(400, "/unregister", {}, what="unregister without name")
        # None of these made an app.
        self.assertEqual(self.list()["apps"], [])

    def test_deep_nesting_400(self):
        """Bodies nested 10,000 and 5,000 deep are refused before they are parsed
        (400 naming the nesting), on both POST paths, and the process lives:
        Jansson recurses once per level, and on a CivetWeb worker's 100 KiB stack
        such a body used to end proxy_public with SIGSEGV."""
        for raw in (b'{"name":' + b"[" * 10000, b"[" * 5000 + b"]" * 5000):
            for path in ("/register", "/unregister"):
                resp = self.expect_error(400, path, raw=raw, what="nested %d bytes" % len(raw))
                self.assertIn("nested", resp["error"], resp)
                self.assertTrue(self.public.alive(), "public died after a deep body:\n"
                                + self.public.log_tail())
        # Nesting within the limit is parsed as usual (here: a bad field, 400 too,
        # but for the field, not the nesting).
        resp = self.expect_error(400, "/register", raw=b'{"name":[[[[1]]]]}', what="4 levels")
        self.assertNotIn("nested", resp["error"], resp)
        self.assertEqual(self.list()["apps"], [])

    def test_unregister_unknown_404(self):
        self.expect_error(404, "/unregister", {"name": "ghost"})

    def test_conflicts_409(self):
        port = free_port()
        self.assertEqual(self.api("POST", "/register", self.body(name="a", public_port=port))[0],
                         201)
        self.expect_error(409, "/register", self.body(name="a"), what="name taken")
        self.expect_error(409, "/register", self.body(name="b", public_port=port),
                          what="port taken by another app")
        squat = socket.socket()
        self.addCleanup(squat.close)
        squat.bind(("127.0.0.1", 0))
        squat.listen(1)
        self.expect_error(409, "/register", self.body(name="c",
                                                      public_port=squat.getsockname()[1]),
                          what="port in use by another process")
        names = sorted(a["name"] for a in self.list()["apps"])
        self.assertEqual(names, ["a"])

    def test_auth_401(self):
        for auth in (None, "Bearer nope", "bearer", "Token " + self.token):
            for method, path, b in (("GET", "/list", None),
                                    ("POST", "/register", self.body()),
                                    ("POST", "/unregister", {"name": "web"})):
                st, resp = self.api(method, path, b, token=None, auth_header=auth)
                self.assertEqual(st, 401, "%s %s Authorization %r -> %s" % (method, path,
                                                                           auth, st))
                self.assertIsInstance(resp, dict, resp)
                self.assertIn("error", resp)
        self.assertEqual(self.list()["apps"], [], "an unauthorised call registered an app")

    def test_bearer_scheme_case_insensitive(self):
        """RFC 7235: the auth scheme is case-insensitive; the token is not."""
        for scheme in ("bearer", "BEARER", "BeArEr"):
            st, resp = self.api("GET", "/list", token=None,
                                auth_header="%s %s" % (scheme, self.token))
            self.assertEqual(st, 200, "Authorization: %s TOKEN -> %s %r" % (scheme, st, resp))
        st, resp = self.api("GET", "/list", token=None, auth_header="bearer " + self.token.upper())
        self.assertEqual(st, 401 if self.token.upper() != self.token else 200, resp)

    def raw_request(self, head):
        """Send head (bytes, ends in a blank line) on a raw socket; returns
        (status line, headers with lower-case names, body bytes up to the close)."""
        with connect(self.web_port) as s:
            s.sendall(head)
            data = harness.recv_all(s, limit=1 << 20)
        top, sep, body = data.partition(b"\r\n\r\n")
        self.assertTrue(sep, "no complete answer head: %r" % data[:200])
        lines = top.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return lines[0], hdrs, body

    def test_head_has_no_body(self):
        """HEAD gets the headers GET would (same Content-Length) and no body."""
        auth = "Authorization: Bearer %s\r\n" % self.token
        for path, with_auth in (("/list", True), ("/", False), ("/metrics", True)):
            req = "%%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, auth if with_auth else "")
            status, ghdr, gbody = self.raw_request((req % "GET").encode())
            self.assertIn(" 200 ", status, path)
            self.assertEqual(int(ghdr["content-length"]), len(gbody), path)
            status, hhdr, hbody = self.raw_request((req % "HEAD").encode())
            self.assertIn(" 200 ", status, "HEAD %s -> %s" % (path, status))
            self.assertEqual(hbody, b"", "HEAD %s answered with a body" % path)
            if path != "/metrics":   # the metrics change between two calls
                self.assertEqual(hhdr.get("content-length"), ghdr["content-length"],
                                 "HEAD %s has another Content-Length than GET" % path)
            self.assertEqual(hhdr.get("content-type"), ghdr.get("content-type"), path)
        # An error answer to HEAD has no body either.
        status, hdr, body = self.raw_request(b"HEAD /list HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(" 401 ", status)
        self.assertEqual(body, b"")
        self.assertGreater(int(hdr["content-length"]), 0)

    def test_private_may_be_omitted_with_one_private(self):
        port = free_port()
        st, resp = self.api("POST", "/register", self.body(name="solo", public_port=port,
                                                           private=DELETE))
        self.assertEqual(st, 201, resp)
        self.assertEqual(resp["app"]["private"], "home")
        self.wait_online(apps=["solo"])
        self.echo_roundtrip(port)
        # With a second private known, leaving it out is ambiguous: 400.
        self.start_private(name="office")
        self.wait_online(private="office")
        self.expect_error(400, "/register", self.body(name="amb", private=DELETE),
                          what="private omitted with two privates known")
        st, resp = self.api("POST", "/register", self.body(name="off", private="office"))
        self.assertEqual(st, 201, resp)

    def test_private_register_flag(self):
        """--register on the private side registers apps (visible in /list)."""
        p1, p2 = free_port(), free_port()
        self.start_private(name="cli", register=[
            "alpha:%d:127.0.0.1:%d" % (p1, self.echo.port),
            "beta:%d:localhost:%d" % (p2, self.echo.port)])
        body = self.wait_online(private="cli", apps=["alpha", "beta"])
        a = self.find(body["apps"], "alpha")
        b = self.find(body["apps"], "beta")
        self.assertEqual((a["public_port"], a["target_host"], a["target_port"], a["private"]),
                         (p1, "127.0.0.1", self.echo.port, "cli"))
        self.assertEqual((b["public_port"], b["target_host"], b["target_port"], b["private"]),
                         (p2, "localhost", self.echo.port, "cli"))
        self.echo_roundtrip(p1)
        self.echo_roundtrip(p2)


class _Delete:
    pass


DELETE = _Delete()

class AllowPortsTest(ProxyTest):
    """--allow-ports: apps may use only the public ports the admin allows
    (default 1024-65535); a port outside gets 403 with the reason, from the API
    and from a private's --register; an app restored from the state whose port
    is no longer allowed is kept but not served."""

    def setUp(self):
        super().setUp()
        self.echo = self.server(apps.EchoServer)
        # Below the ephemeral range, where other tests' ports do not land.
        self.low = harness.free_port_range(100)[0]
        self.allowed = "%d-%d" % (self.low, self.low + 99)

    def register_expect(self, port, status):
        st, resp = self.api("POST", "/register", {
            "name": "a%d" % port, "public_port": port, "target_host": "127.0.0.1",
            "target_port": self.echo.port, "private": "home"})
        self.assertEqual(st, status, "port %d -> %s %r" % (port, st, resp))
        return resp

    def test_default_refuses_ports_below_1024(self):
        self.start_public()
        self.start_private()
        self.wait_online()
        resp = self.register_expect(80, 403)
        self.assertIn("--allow-ports", resp["error"])
        self.assertIn("1024-65535", resp["error"])
        self.register_expect(self.low + 50 if self.low + 50 > 1024 else 40050, 201)

    def test_only_the_listed_ranges(self):
        self.start_public(extra=["--allow-ports", self.allowed + ",7"])
        spec = "inside:%d:127.0.0.1:%d" % (self.low + 10, self.echo.port)
        outside = "outside:%d:127.0.0.1:%d" % (self.low + 100, self.echo.port)
        priv = self.start_private(register=[spec, outside])
        self.wait_online(apps=["inside"])
        priv.wait_log(r"ev=app_refused app=outside .*--allow-ports", 10 * SLOW)
        self.echo_roundtrip(self.low + 10)
        self.register_expect(self.low + 99, 201)
        self.register_expect(self.low - 1, 403)
        self.register_expect(6, 403)

    def test_restored_app_outside_the_ports_is_kept_not_served(self):
        self.start_public()
        self.start_private()
        self.wait_online()
        port = self.low + 20 if self.low + 20 > 1024 else 40020
        self.register_expect(port, 201)
        self.assertEqual(self.public.stop(), 0)
        self.start_public(extra=["--allow-ports", "1-2"])
        self.public.wait_log(r"ev=app_port_not_allowed app=a%d" % port, 10 * SLOW)
        app = self.find(self.list()["apps"], "a%d" % port)
        self.assertIsNotNone(app, "the app was dropped")
        self.assertFalse(app["online"])
        self.assertIn("--allow-ports", app["error"])
        with self.assertRaises(OSError):
            connect(port, timeout=2).close()
        # Allowed again: served again, nothing was lost.
        self.assertEqual(self.public.stop(), 0)
        self.start_public()
        self.wait_online(apps=["a%d" % port])
        self.echo_roundtrip(port)


class BindTest(ProxyTest):
    """With --bind, every port of the public side (tunnel, web, and each app's)
    listens on that address only."""

    def test_every_port_on_the_bind_address_only(self):
        echo = self.server(apps.EchoServer)
        app_port = free_port()
        self.start_public()  # the harness binds 127.0.0.1
        self.start_private(register=["e:%d:127.0.0.1:%d" % (app_port, echo.port)])
        self.wait_online(apps=["e"])
        self.echo_roundtrip(app_port)
        for port in (self.tunnel_port, self.web_port, app_port):
            with self.assertRaises(ConnectionRefusedError, msg="port %d answers on 127.0.0.2" %
                                   port):
                socket.create_connection(("127.0.0.2", port), timeout=5).close()


if __name__ == "__main__":
    harness.main()
