"""The front of the web port (web_front.c), in plain HTTP and in HTTPS mode.

Every connection to WEB_PORT passes the front before CivetWeb sees a byte: the
whole request (head and body) must arrive within one 10 s deadline from the
accept, however it trickles in (408 otherwise); only complete requests reach
CivetWeb's 8 workers; one address holds at most 16 connections and nobody is
ever pushed out by newcomers. Attackers use loopback addresses 127.0.0.2 and
up (bound before connect); the legitimate client uses 127.0.0.1.

Nothing here measures time: a legitimate request must be answered within a
generous bounded wait, and the 408 must come while the trickle still goes on
(its body would need minutes at that pace)."""
import http.client
import json
import socket
import ssl
import threading
import time

import harness
from harness import ProxyTest, SLOW

PER_ADDR = 16       # WEB_FRONT_MAX_PER_ADDR
MAX_CONNS = 256     # WEB_FRONT_MAX_CONNS
LEGIT_WAIT = 5      # seconds (times SLOW) a legitimate request may take here


def client_ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


class FrontMixin:
    """The tests; the subclasses pick plain HTTP or HTTPS."""

    https = False

    def setUp(self):
        super().setUp()
        self.ctx = client_ctx()
        self.start_public(extra=["--web-https"] if self.https else [], wait=False)
        harness.wait_until(self.up, 20 * SLOW, "the web API")
        self.stop_trickle = threading.Event()
        self.addCleanup(self.stop_trickle.set)

    def up(self):
        if not self.public.alive():
            raise AssertionError("public exited during start:\n" + self.public.log_tail())
        return self.request("GET", "/list")[0] == 200

    # ---- clients
    def request(self, method, path, body=None, token="default", source="127.0.0.1",
                timeout=None):
        """(status, parsed body) from source, bounded by timeout."""
        if token == "default":
            token = self.token
        timeout = timeout or 10 * SLOW
        if self.https:
            c = http.client.HTTPSConnection("127.0.0.1", self.web_port, timeout=timeout,
                                            context=self.ctx, source_address=(source, 0))
        else:
            c = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout,
                                           source_address=(source, 0))
        try:
            hdrs = {"Authorization": "Bearer " + token} if token else {}
            data = None if body is None else json.dumps(body).encode()
            st, _, parsed = harness.http_exchange(c, method, path, data, hdrs)
            return st, parsed
        finally:
            c.close()

    def legit_list(self, what):
        """GET /list from 127.0.0.1 must be answered 200 within LEGIT_WAIT s."""
        try:
            st, body = self.request("GET", "/list", timeout=LEGIT_WAIT * SLOW)
        except (OSError, http.client.HTTPException) as e:
            self.fail("GET /list from 127.0.0.1 not answered with %s: %r" % (what, e))
        self.assertEqual(st, 200, "GET /list with %s: %s %r" % (what, st, body))
        self.assertIn("apps", body)

    def tcp(self, source, timeout=None):
        s = socket.socket()
        self.addCleanup(s.close)
        s.settimeout(timeout or 10 * SLOW)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.web_port))
        return s

    def conn(self, source):
        """A connection ready to carry HTTP: TCP, and the TLS handshake in HTTPS mode."""
        s = self.tcp(source)
        if self.https:
            s = self.ctx.wrap_socket(s)
            self.addCleanup(s.close)
        return s

    def refused_promptly(self, s):
        """The front refuses a connection over a limit at once: a 503 in plain
        HTTP, a close in HTTPS (no handshake is spent on it)."""
        s.settimeout(LEGIT_WAIT * SLOW)
        try:
            data = s.recv(4096)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if self.https:
            return data == b""
        return data.startswith(b"HTTP/1.1 503 ") or data == b""

    def trickle(self, socks, interval=1.0):
        """Send one byte on each of socks every interval seconds until the test ends."""
        def run():
            while not self.stop_trickle.wait(interval):
                for s in socks:
                    try:
                        s.sendall(b"a")
                    except (OSError, ValueError):
                        pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)

    def read_answer(self, s, sender=None, limit=60):
        """(status code, bytes) of the answer on s, read to the end of the
        connection (the front closes after one answer), while sender() is called
        about once a second; status None when no answer came within limit*SLOW s."""
        data = b""
        s.settimeout(1)
        deadline = time.monotonic() + limit * SLOW
        next_send = 0
        while time.monotonic() < deadline:
            if sender and time.monotonic() >= next_send:
                sender()
                next_send = time.monotonic() + 1
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1."):
            return None, data
        return int(data.split(b" ", 2)[1]), data

    # ---- tests
    def test_idle_and_trickling_connections_do_not_starve_others(self):
        """8 POSTs whose bodies trickle in one byte a second (no token: the
        answer would be 401) and 30 connections that say nothing: GET /list
        from another client is answered every time. Before the front held
        whole requests, CivetWeb's 8 workers sat on the trickling bodies."""
        head = (b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000\r\n\r\n")
        tricklers = []
        for _ in range(8):
            s = self.conn("127.0.0.5")
            s.sendall(head + b"{")
            tricklers.append(s)
        self.trickle(tricklers)
        idle = [self.tcp("127.0.0.%d" % (2 + i % 3)) for i in range(30)]
        time.sleep(1)   # let them settle wherever they go
        for i in range(5):
            self.legit_list("8 trickling POSTs and 30 idle connections (round %d)" % i)
        self.assertEqual(len(idle), 30)
        self.assertTrue(self.public.alive())

    def test_slow_readers_do_not_hold_workers(self):
        """12 clients ask for the page's script (about 55 KB) and never read the
        answer (tiny receive buffers): the front takes CivetWeb's whole answer
        into memory and frees its worker at once, so GET /list from another
        client is answered while they sit there."""
        readers = []
        for i in range(12):
            s = socket.socket()
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.settimeout(10 * SLOW)
            s.bind(("127.0.0.%d" % (2 + i % 2), 0))
            s.connect(("127.0.0.1", self.web_port))
            if self.https:
                s = self.ctx.wrap_socket(s)
                self.addCleanup(s.close)
            s.sendall(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(s)
        time.sleep(1)   # let the answers fill whatever buffers they can
        for i in range(3):
            self.legit_list("12 clients not reading their answers (round %d)" % i)
        # They still get the whole script when they read at last.
        status, data = self.read_answer(readers[0], limit=LEGIT_WAIT)
        self.assertEqual(status, 200, data[:200])
        self.assertGreater(len(data), 20000)

    def test_trickled_request_cut_with_408(self):
        """A body trickling one byte a second and a head trickling one byte a
        second are both cut with 408 at the request deadline, while bytes keep
        arriving (the body would take almost 3 hours at that pace)."""
        body_s = self.conn("127.0.0.2")
        body_s.sendall(b"POST /unregister HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n{")
        head_s = self.conn("127.0.0.3")
        head_s.sendall(b"GET /list HTTP/1.1\r\n")
        sent = {"body": 0, "head": 0}

        def send_more():
            for name, s, byte in (("body", body_s, b" "), ("head", head_s, b"X")):
                try:
                    s.sendall(byte)
                    sent[name] += 1
                except OSError:
                    pass
        status, data = self.read_answer(body_s, send_more)
        self.assertEqual(status, 408, "trickled body answered %r" % data[:200])
        self.assertIn(b'{"error":', data)
        self.assertLess(sent["body"], 9999, "the body was complete: no deadline was tested")
        status, data = self.read_answer(head_s, send_more, limit=20)
        self.assertEqual(status, 408, "trickled head answered %r" % data[:200])
        self.public.wait_log(r"ev=web_front_answer client=127\.0\.0\.2:\d+ status=408", 5 * SLOW)
        self.legit_list("two connections cut at the deadline")

    def test_per_address_cap(self):
        """One address holds at most 16 connections: the 17th is refused at
        once (503 or closed) while the 16 stay open, and others are served."""
        held = [self.tcp("127.0.0.2") for _ in range(PER_ADDR)]
        extra = self.tcp("127.0.0.2")
        self.assertTrue(self.refused_promptly(extra),
                        "the %dth connection from one address was accepted" % (PER_ADDR + 1))
        for s in held:
            s.setblocking(False)
            try:
                self.assertNotEqual(s.recv(1), b"", "one of the first %d was closed" % PER_ADDR)
            except BlockingIOError:
                pass   # open and silent: as it should be
        self.legit_list("one address at its cap")
        self.public.wait_log(r"ev=web_front_refused client=127\.0\.0\.2:\d+ .*"
                             r"too many connections from this address", 5 * SLOW)

    def test_no_push_out_when_full(self):
        """A client that has half sent its request keeps its connection while
        17 other addresses open 16 connections each (272: more than the 256 the
        front holds): newcomers are refused, the client finishes and is
        served. (The HTTPS front used to push out the oldest unfinished
        connection to make room.)"""
        mine = self.conn("127.0.0.1")
        mine.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\n")
        others, refused = [], 0   # refused: connections the front did not take
        for a in range(17):
            for _ in range(PER_ADDR):
                others.append(self.tcp("127.0.0.%d" % (2 + a)))
        newcomer = self.tcp("127.0.1.1")
        self.assertTrue(self.refused_promptly(newcomer), "a newcomer was accepted into a full front")
        mine.sendall(b"Authorization: Bearer %s\r\n\r\n" % self.token.encode())
        status, data = self.read_answer(mine, limit=LEGIT_WAIT)
        self.assertEqual(status, 200, "the first client was pushed out: %r" % data[:200])
        for s in others:
            # An accepted connection hears nothing before its deadline; a refused
            # one got a 503 (plain HTTP) or was closed.
            s.setblocking(False)
            try:
                s.recv(1)
                refused += 1
            except BlockingIOError:
                pass
            except OSError:
                refused += 1
        self.assertGreaterEqual(refused, len(others) + 1 - MAX_CONNS,
                                "the front held more than %d connections" % MAX_CONNS)

    def test_conflicting_content_length_400(self):
        """Two Content-Length headers (different or equal), a Content-Length
        with Transfer-Encoding, or a malformed one: 400 from the front."""
        auth = b"Authorization: Bearer " + self.token.encode() + b"\r\n"
        for lengths, what in ((b"Content-Length: 13\r\nContent-Length: 14\r\n", "different"),
                              (b"Content-Length: 13\r\nContent-Length: 13\r\n", "equal"),
                              (b"Content-Length: 13\r\nTransfer-Encoding: chunked\r\n", "TE"),
                              (b"Content-Length: 13, 13\r\n", "a list"),
                              (b"Content-Length: +13\r\n", "a sign")):
            s = self.conn("127.0.0.2")
            s.sendall(b"POST /unregister HTTP/1.1\r\nHost: x\r\n" + auth + lengths + b"\r\n"
                      + b'{"name":"x"} ')
            status, data = self.read_answer(s, limit=LEGIT_WAIT)
            self.assertEqual(status, 400, "Content-Length %s: %r" % (what, data[:300]))
            s.close()
        self.legit_list("conflicting Content-Length headers")

    def test_front_answers_its_refusals(self):
        """Too large a head (431) or body (413, at once from the header), POST
        without Content-Length (411), a bare LF (400): JSON errors from the
        front, with the security headers, no body for HEAD."""
        cases = [
            (b"GET /list HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431),
            (b"POST /register HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", 413),
            (b"POST /register HTTP/1.1\r\nHost: x\r\n\r\n", 411),
            (b"GET /list HTTP/1.1\nHost: x\n\n", 400),
        ]
        for req, want in cases:
            s = self.conn("127.0.0.2")
            try:
                s.sendall(req)
            except OSError:
                pass
            status, data = self.read_answer(s, limit=LEGIT_WAIT)
            self.assertEqual(status, want, "%r... -> %r" % (req[:40], data[:200]))
            head, _, rest = data.partition(b"\r\n\r\n")
            self.assertIn(b"X-Frame-Options: DENY", head)
            self.assertIn(b"Connection: close", head)
            s.close()
        s = self.conn("127.0.0.2")
        s.sendall(b"HEAD / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.settimeout(LEGIT_WAIT * SLOW)
        data = self.read_answer(s, limit=LEGIT_WAIT)[1]
        self.assertTrue(data.startswith(b"HTTP/1.1 411 "), data[:100])
        self.assertTrue(data.endswith(b"\r\n\r\n"), "HEAD refusal with a body: %r" % data)
        self.legit_list("refused requests")


class PlainFrontTest(FrontMixin, ProxyTest):
    https = False


class HttpsFrontTest(FrontMixin, ProxyTest):
    https = True


if __name__ == "__main__":
    harness.main()
