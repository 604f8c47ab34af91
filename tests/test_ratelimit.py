"""Rate limiting of wrong tokens per source address (ratelimit.c), on the web port
and on the tunnel port, each with its own table (a blocked page never locks a
home proxy out of the tunnel).

Policy (docs/SECURITY.md): 5 wrong tokens are free; each further one blocks the
address for 1 s, 2 s, 4 s ... (at most 5 min); the right token resets it. While
blocked, the web port answers 429 with Retry-After and a JSON error, even to the
right token. Addresses are grouped (ratelimit.c): one budget per IPv4 address,
per IPv6 /64, and one for all of loopback (127.0.0.0/8 and ::1 are one host).
These tests can only use loopback, so they check that all of it shares one
budget; that other hosts keep their own is a unit test (tests/unit/
test_ratelimit.c).

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

    def wait_unblocked(self, source="127.0.0.1"):
        """The right token from source until it is served (each 429 waited out
        as its Retry-After says); the right token then resets the budget."""
        for _ in range(12):
            st, hdr, body = self.request(source=source)
            if st == 200:
                return
            wait = self.assert_429((st, hdr, body), "right token while blocked")
            time.sleep(wait + 0.2)
        self.fail("%s still blocked" % source)

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
        # Another loopback address is the same host: blocked too. The log names
        # the address and its group.
        self.assert_429(self.request(source="127.0.0.2"), "right token from 127.0.0.2")
        self.assertTrue(self.public.alive())
        log = self.public_log()
        self.assertRegex(log, r"ev=rate_limit_block client=127\.0\.0\.1 group=loopback ")
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
        # 127.0.0.1 is the same host (loopback is one budget): once the block
        # has passed and the right token reset it, a good private comes online.
        self.wait_unblocked()
        self.start_private(extra=extra)
        self.wait_online()
        self.assertNotIn(self.token, self.public_log(), "the log shows the token")

    def test_web_failures_do_not_block_tunnel(self):
        """One budget per port: wrong tokens on the web port (a mistyped token
        on the page, or strangers behind the same carrier-grade NAT address)
        block that address on the web port only; a home proxy with the right
        token still gets in on the tunnel port, and wrong HELLOs there are
        counted on their own."""
        extra = self.tunnel_plaintext_flag()
        self.start_public(extra=extra)
        self.block_long("127.0.0.1", at_least=4)
        st, hdr, body = self.request(source="127.0.0.1")
        self.assertEqual(st, 429, "the web port is not blocked after the wrong tokens: %r"
                         % body)
        h = self.hello(self.token, "127.0.0.1")
        self.assertIsNotNone(h, "no answer to a right HELLO")
        self.assertEqual(h.get("op"), OP_WELCOME,
                         "right token on the tunnel port refused because of web failures: %r"
                         % h)
        # The tunnel port's own budget: FREE_FAILS wrong HELLOs are free there
        # even though the web port blocks the address.
        for i in range(FREE_FAILS):
            g = self.hello("wrong-" + self.token, "127.0.0.3")
            self.assertEqual((g or {}).get("code"), "bad_token",
                             "wrong HELLO %d answered %r: the web failures counted" % (i, g))
        self.assertRegex(self.public_log(), r"ev=rate_limit_block client=127\.0\.0\.1 "
                         r"group=loopback port=web ")

    def test_loopback_addresses_share_one_budget(self):
        """Wrong tokens from 200 loopback addresses (127.0.0.2 ... 127.0.0.201),
        one each, add up to a block: all of 127.0.0.0/8 is one host with one
        budget, so a guesser on the machine cannot multiply it by the addresses
        it can bind."""
        self.start_public()
        answers = []
        for i in range(200):
            st, hdr, body = self.request(token="wrong-" + self.token,
                                         source="127.0.0.%d" % (2 + i))
            self.assertIn(st, (401, 429), body)
            answers.append(st)
        self.assertTrue(429 in answers, "200 loopback addresses, one wrong token each, "
                        "were all answered 401: one budget per address")
        first = answers.index(429)
        self.assertGreaterEqual(first, FREE_FAILS + 1,
                                "blocked after only %d wrong tokens" % first)
        self.assertRegex(self.public_log(), r"ev=rate_limit_block client=127\.0\.0\.\d+ "
                         r"group=loopback port=web fails=%d " % (FREE_FAILS + 1))
        self.assertTrue(self.public.alive())


if __name__ == "__main__":
    harness.main()
