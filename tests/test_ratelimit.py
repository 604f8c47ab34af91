"""Rate limiting of wrong tokens per source address (ratelimit.c), on the web port
and on the tunnel port, which share one table.

Policy (docs/SECURITY.md): 5 wrong tokens are free; each further one blocks the
address for 1 s, 2 s, 4 s ... (at most 5 min); the right token resets it. While
blocked, the web port answers 429 with Retry-After and a JSON error, even to the
right token. Other addresses are served as usual: the tests use the loopback
addresses 127.0.0.2 and 127.0.0.3 as "other clients".

Nothing here measures time: a test waits for what Retry-After announces before
it tries again, so slow (sanitizer) builds see the same behaviour."""
import http.client
import json
import socket
import subprocess
import time

import harness
from harness import ProxyTest, frame, read_frame, SLOW, OP_HELLO, OP_WELCOME, OP_ERROR

FREE_FAILS = 5


class RateLimitTest(ProxyTest):
    def public_log(self):
        """The public's log without the harness's command line (it has --token)."""
        return "\n".join(l for l in self.public.log().splitlines() if not l.startswith("# "))

    def request(self, path="/list", token="default", source="127.0.0.1", method="GET",
                body=None):
        """(status, headers dict with lower-case names, parsed body) from source."""
        if token == "default":
            token = self.token
        c = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10 * SLOW,
                                       source_address=(source, 0))
        try:
            headers = {}
            if token is not None:
                headers["Authorization"] = "Bearer " + token
            data = None if body is None else json.dumps(body).encode()
            return harness.http_exchange(c, method, path, data, headers)
        finally:
            c.close()

    def fail_until_blocked(self, source, max_tries=40):
        """Wrong tokens from source until the web port answers 429; returns that
        answer (status, headers, body) and how many 401s came before it."""
        n401 = 0
        for _ in range(max_tries):
            st, hdr, body = self.request(token="wrong-" + self.token, source=source)
            if st == 429:
                return (st, hdr, body), n401
            self.assertEqual(st, 401, "wrong token -> %s %r" % (st, body))
            n401 += 1
        self.fail("no 429 after %d wrong tokens from %s; log:\n%s"
                  % (max_tries, source, self.public.log_tail()))

    def assert_429(self, resp, what):
        st, hdr, body = resp
        self.assertEqual(st, 429, "%s -> %s %r" % (what, st, body))
        self.assertIn("retry-after", hdr, "%s: 429 without Retry-After: %r" % (what, hdr))
        self.assertRegex(hdr["retry-after"], r"^[1-9][0-9]*$", what)
        self.assertIsInstance(body, dict, "%s: 429 body is not JSON: %r" % (what, body))
        self.assertIsInstance(body.get("error"), str, body)
        return int(hdr["retry-after"])

    def block_long(self, source, at_least=8):
        """Wrong tokens from source until it is blocked for at_least seconds:
        each block is waited out as Retry-After says, then one more wrong token
        doubles it. Returns the last Retry-After."""
        resp, n401 = self.fail_until_blocked(source)
        self.assertGreaterEqual(n401, FREE_FAILS + 1,
                                "blocked after only %d wrong tokens" % n401)
        wait = self.assert_429(resp, "wrong token while blocked")
        for _ in range(10):
            if wait >= at_least:
                return wait
            time.sleep(wait + 0.2)
            st, _, body = self.request(token="wrong-" + self.token, source=source)
            self.assertIn(st, (401, 429), body)
            if st == 401:
                resp = self.request(token="wrong-" + self.token, source=source)
                new_wait = self.assert_429(resp, "wrong token after a block ended")
                self.assertGreater(new_wait, wait, "the block did not grow")
                wait = new_wait
        self.fail("no block of %d s or more" % at_least)

    def test_web_wrong_tokens_get_429(self):
        self.start_public()
        # The first few wrong tokens are free (plain 401s), then 429s; the
        # block grows until it surely covers the next few requests.
        self.block_long("127.0.0.1")
        # Blocked even with the right token, on every API path.
        self.assert_429(self.request(), "right token while blocked")
        self.assert_429(self.request("/metrics"), "GET /metrics while blocked")
        self.assert_429(self.request("/unregister", method="POST", body={"name": "x"}),
                        "POST /unregister while blocked")
        # The page itself needs no token and is still served.
        st, _, _ = self.request("/", token=None)
        self.assertEqual(st, 200)
        # Another address is served as usual, and the process logs the block.
        st, _, body = self.request(source="127.0.0.2")
        self.assertEqual(st, 200, body)
        self.assertTrue(self.public.alive())
        log = self.public_log()
        self.assertRegex(log, r"ev=rate_limit_block client=127\.0\.0\.1 ")
        self.assertNotIn(self.token, log, "the log shows the token")

    def test_web_success_resets(self):
        self.start_public()
        src = "127.0.0.3"
        for _ in range(2):
            for _ in range(FREE_FAILS - 1):
                st, _, body = self.request(token="wrong", source=src)
                self.assertEqual(st, 401, body)
            st, _, body = self.request(source=src)
            self.assertEqual(st, 200, "right token after %d wrong ones: %s %r"
                             % (FREE_FAILS - 1, st, body))
        # No token at all is no guess: it is never counted.
        for _ in range(3 * FREE_FAILS):
            st, _, body = self.request(token=None, source=src)
            self.assertEqual(st, 401, body)
        st, _, body = self.request(source=src)
        self.assertEqual(st, 200, body)

    # ---- the tunnel port (the lead's wiring of ratelimit.c into the handshake)
    def tunnel_plaintext_flag(self):
        out = subprocess.run([self.bin("proxy_public"), "--help"], capture_output=True,
                             text=True, timeout=10 * SLOW).stdout
        return ["--insecure-plaintext"] if "--insecure-plaintext" in out else []

    def hello(self, token, source):
        """One tunnel connection from source with a HELLO; returns the first frame
        header the public answers (None when it closes without one)."""
        s = socket.socket()
        s.settimeout(10 * SLOW)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", self.tunnel_port))
            s.sendall(frame({"op": OP_HELLO, "version": 1, "token": token,
                             "name": "guess", "window": 1 << 20}))
            f = read_frame(s)
            return f[0] if f else None
        except (ConnectionResetError, BrokenPipeError):
            return None
        finally:
            s.close()

    def test_tunnel_wrong_tokens_refused(self):
        extra = self.tunnel_plaintext_flag()
        self.start_public(extra=extra)
        src = "127.0.0.2"
        refused = None
        for i in range(40):
            h = self.hello("wrong-" + self.token, src)
            if h is not None and h.get("op") == OP_ERROR and h.get("code") == "bad_token":
                continue
            refused = (i, h)
            break
        if refused is None:
            if "rate_limit" not in self.public.log():
                self.skipTest("the tunnel port has no rate limiting yet (no rate_limit in "
                              "the log after 40 wrong HELLOs)")
            self.fail("40 wrong HELLOs from one address, never refused; log:\n%s"
                      % self.public.log_tail())
        i, h = refused
        self.assertGreaterEqual(i, FREE_FAILS, "refused after only %d wrong HELLOs" % i)
        self.assertIsNotNone(h, "refused without an ERROR frame")
        self.assertEqual(h.get("op"), OP_ERROR, h)
        self.assertIsInstance(h.get("message"), str, h)
        self.assertRegex(h.get("code", "") + " " + h["message"],
                         r"(?i)rate|too many|wait|retry|later", h)
        self.assertTrue(self.public.alive())
        # Other addresses keep being served: a good private comes online.
        self.start_private(extra=extra)
        self.wait_online()
        self.assertNotIn(self.token, self.public_log(), "the log shows the token")

    def test_tunnel_blocked_by_web_failures(self):
        """One budget for one secret: wrong tokens on the web port block the
        same address on the tunnel port, even with the right token."""
        extra = self.tunnel_plaintext_flag()
        self.start_public(extra=extra)
        self.block_long("127.0.0.1")
        h = self.hello(self.token, "127.0.0.1")
        if h is not None and h.get("op") == OP_WELCOME:
            # Is the tunnel port rate limited at all? Wrong HELLOs from elsewhere.
            for _ in range(3 * FREE_FAILS):
                g = self.hello("wrong-" + self.token, "127.0.0.3")
                if g is None or g.get("code") != "bad_token":
                    break
            else:
                self.skipTest("the tunnel port has no rate limiting yet")
            self.fail("right token on the tunnel port accepted while the address is "
                      "blocked: %r" % h)
        self.assertIsNotNone(h, "refused without an ERROR frame")
        self.assertEqual(h.get("op"), OP_ERROR, h)
        self.assertRegex(h.get("code", "") + " " + h.get("message", ""),
                         r"(?i)rate|too many|wait|retry|later", h)
        # Another address still gets in.
        st, _, body = self.request(source="127.0.0.2")
        self.assertEqual(st, 200, body)


if __name__ == "__main__":
    harness.main()
