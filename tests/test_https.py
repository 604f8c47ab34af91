"""HTTPS on the web port (proxy_public --web-https): the in-process TLS front of
web_front.c in front of CivetWeb (test_web_front.py has the front's limits, in
both modes). The client pins the certificate of
STATE_DIR/tls.crt by its SHA-256 (and checks it against the fingerprint the
process prints). Hostile clients (garbage, a truncated ClientHello, many
half-open connections, stalled requests) end only their own connections."""
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess

import harness
from harness import ProxyTest, SLOW, closed_by_peer, wait_until


def client_ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE   # pinned by fingerprint instead, see request()
    return c


def client_hello_bytes():
    """The bytes of a real TLS ClientHello, made without any network."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx().wrap_bio(inc, out, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert len(data) > 100, "no ClientHello produced"
    return data


class HttpsTest(ProxyTest):
    def setUp(self):
        super().setUp()
        out = subprocess.run([self.bin("proxy_public"), "--help"], capture_output=True,
                             text=True, timeout=10 * SLOW).stdout
        if "--web-https" not in out:
            self.skipTest("proxy_public --help does not mention --web-https yet")
        self.pin = None
        self.start_public(extra=["--web-https"], wait=False)
        crt = os.path.join(self.state_dir, "tls.crt")
        wait_until(lambda: os.path.exists(crt) or not self.public.alive(), 20 * SLOW,
                   "STATE_DIR/tls.crt")
        with open(crt) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        self.pin = hashlib.sha256(der).hexdigest()
        self.ctx = client_ctx()

        def up():
            if not self.public.alive():
                raise AssertionError("public exited during start:\n" + self.public.log_tail())
            return self.request("GET", "/list")[0] == 200
        wait_until(up, 20 * SLOW, "the HTTPS web API")

    def request(self, method, path, body=None, token="default", source="127.0.0.1",
                raw_body=None, headers=None):
        """(status, headers with lower-case names, parsed body) over pinned HTTPS."""
        if token == "default":
            token = self.token
        c = http.client.HTTPSConnection("127.0.0.1", self.web_port, timeout=10 * SLOW,
                                        context=self.ctx, source_address=(source, 0))
        try:
            c.connect()
            der = c.sock.getpeercert(binary_form=True)
            self.assertEqual(hashlib.sha256(der).hexdigest(), self.pin,
                             "the web port shows another certificate than STATE_DIR/tls.crt")
            self.assertEqual(c.sock.version(), "TLSv1.3")
            hdrs = dict(headers or {})
            if token is not None:
                hdrs["Authorization"] = "Bearer " + token
            data = raw_body if body is None else json.dumps(body).encode()
            return harness.http_exchange(c, method, path, data, hdrs)
        finally:
            c.close()

    def still_serving(self, what):
        self.assertTrue(self.public.alive(), "public died after %s:\n%s"
                        % (what, self.public.log_tail()))
        st, _, body = self.request("GET", "/list")
        self.assertEqual(st, 200, "after %s: %s %r" % (what, st, body))
        self.assertIn("apps", body)

    def raw(self, source="127.0.0.1"):
        s = socket.socket()
        s.settimeout(10 * SLOW)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.web_port))
        self.addCleanup(s.close)
        return s

    # ---- what a client sees
    def test_list_200_and_401(self):
        st, hdr, body = self.request("GET", "/list")
        self.assertEqual(st, 200, body)
        self.assertIsInstance(body.get("apps"), list, body)
        self.assertIsInstance(body.get("privates"), list, body)
        for token, what in ((None, "no token"), ("wrong-" + self.token, "a wrong token")):
            st, hdr, body = self.request("GET", "/list", token=token)
            self.assertEqual(st, 401, "%s -> %s %r" % (what, st, body))
            self.assertIsInstance(body.get("error"), str, body)
        # The fingerprint the process prints is the certificate's.
        m = re.search(r"fingerprint \(SHA-256\): ([0-9A-Fa-f:]{95})", self.public.log())
        if m:
            self.assertEqual(m.group(1).replace(":", "").lower(), self.pin)

    def test_page_headers_and_limits(self):
        st, hdr, body = self.request("GET", "/", token=None)
        self.assertEqual(st, 200)
        self.assertIn("<html", body.lower() if isinstance(body, str) else "")
        csp = hdr.get("content-security-policy", "")
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertEqual(hdr.get("x-frame-options"), "DENY")
        self.assertEqual(hdr.get("x-content-type-options"), "nosniff")
        self.assertEqual(hdr.get("referrer-policy"), "no-referrer")
        self.assertNotIn("set-cookie", hdr)
        # A POST body goes through the front: unknown name -> 404 with a JSON error.
        st, _, body = self.request("POST", "/unregister", {"name": "nope"})
        self.assertEqual(st, 404, body)
        self.assertIsInstance(body.get("error"), str, body)
        # Too large a body: 413.
        st, _, body = self.request("POST", "/register", raw_body=b"{" + b" " * 20000 + b"}",
                                   headers={"Content-Type": "application/json"})
        self.assertEqual(st, 413, body)
        # No Content-Length (chunked): 411.
        st, _, body = self.request("POST", "/register", raw_body=iter([b'{"name":', b'"x"}']),
                                   headers={"Content-Type": "application/json",
                                            "Transfer-Encoding": "chunked"})
        self.assertEqual(st, 411, body)
        self.still_serving("body limits")

    def test_rate_limit_uses_real_address(self):
        """CivetWeb sees 127.0.0.1 for every HTTPS client; the front maps each
        connection back to its real address, which the log shows and the rate
        limit uses (all of loopback is one budget there, so 127.0.0.1 is blocked
        with 127.0.0.3; other hosts keep theirs: tests/unit/test_ratelimit.c)."""
        blocked = None
        for _ in range(40):
            st, hdr, body = self.request("GET", "/list", token="wrong", source="127.0.0.3")
            if st == 429:
                blocked = hdr
                break
            self.assertEqual(st, 401, body)
        self.assertIsNotNone(blocked, "no 429 after 40 wrong tokens over HTTPS")
        self.assertRegex(blocked.get("retry-after", ""), r"^[1-9][0-9]*$")
        self.assertRegex(self.public.log(), r"ev=web_unauthorized client=127\.0\.0\.3 ")
        self.assertRegex(self.public.log(), r"ev=rate_limit_block client=127\.0\.0\.3 ")
        st, _, body = self.request("GET", "/list")
        self.assertEqual(st, 429, "127.0.0.1, the same host, not blocked: %s %r" % (st, body))
        self.assertTrue(self.public.alive())

    # ---- hostile clients
    def test_garbage_and_plain_http(self):
        for data, what in ((b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP"),
                           (bytes(range(256)) * 16, "binary garbage"),
                           (b"\x16\x03\x01\xff\xff" + b"\x00" * 100, "a record length lie")):
            s = self.raw()
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.assertTrue(closed_by_peer(s, 15 * SLOW), "not closed after %s" % what)
            s.close()
            self.still_serving(what)

    def test_truncated_client_hello(self):
        hello = client_hello_bytes()
        for cut in (1, 5, len(hello) // 2, len(hello) - 1):
            s = self.raw()
            s.sendall(hello[:cut])
            s.shutdown(socket.SHUT_WR)
            self.assertTrue(closed_by_peer(s, 15 * SLOW),
                            "not closed after a ClientHello cut at %d then EOF" % cut)
            s.close()
        # Truncated and then stalled: others are served meanwhile.
        stalled = [self.raw() for _ in range(5)]
        for s in stalled:
            s.sendall(hello[:len(hello) // 2])
        self.still_serving("stalled truncated ClientHellos")

    def test_many_half_open_connections(self):
        """100 TCP connections that never say anything (from 7 addresses, within
        the front's 16 per address), 10 that finish the TLS handshake and never
        send a request, 5 that send half a request head, and 30 more from an
        address already at its cap (refused at once): a good client is still
        served, and so is everybody afterwards."""
        idle = [self.raw("127.0.0.%d" % (2 + i % 7)) for i in range(100)]
        tls_idle = []
        for _ in range(10):
            s = self.raw("127.0.0.9")
            tls_idle.append(self.ctx.wrap_socket(s))
        half = []
        for _ in range(5):
            s = self.ctx.wrap_socket(self.raw("127.0.0.10"))
            s.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            half.append(s)
        over = [self.raw("127.0.0.2") for _ in range(30)]
        self.still_serving("145 idle or half-open connections")
        for s in over:
            self.assertTrue(closed_by_peer(s, 10 * SLOW),
                            "a connection over the per-address cap was kept")
        for s in idle + tls_idle + half:
            s.close()
        self.still_serving("closing them all")

    def test_oversized_request_head(self):
        s = self.ctx.wrap_socket(self.raw())
        try:
            s.sendall(b"GET /list HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        try:
            first = s.recv(200)
        except (ConnectionResetError, ssl.SSLError, socket.timeout):
            first = b""
        self.assertFalse(first.startswith(b"HTTP/1.1 200"), first)
        s.close()
        self.still_serving("a 20 KB request head")


if __name__ == "__main__":
    harness.main()
