"""A peer that holds the token but misbehaves: a taken-over private side
against proxy_public, and a taken-over public side against proxy_private.

- 1-byte DATA frames for a connection whose client (or app) does not read:
  what the other side keeps for it must be counted as what it really costs
  (one allocation per frame used to cost ~48 bytes of heap per byte), so
  memory stays near the window;
- BUILD_CONNECTION beyond proxy_private --max-conns is refused with CLOSE,
  counted and logged, and the connections under the limit work.
"""
import socket
import struct
import threading
import time

import harness
from harness import (ProxyTest, SLOW, OP_HELLO, OP_WELCOME, OP_BUILD, OP_CONNECTED, OP_DATA,
                     OP_ACK, OP_CLOSE, frame, read_frame, free_port)
from helpers import apps

WINDOW = 4 << 20
STEP = 256 << 10               # 1-byte frames sent at a time
QUEUED_AT_LEAST = 2 << 20      # what must end up queued in the process, not in the kernel
# What may stay resident for it (payload included: the 16 KiB chunks and
# their headers), on top of the noise of a running process. One allocation
# per frame (as before) cost ~48 bytes per byte: ~100 MiB here.
MEMORY_LIMIT_KIB = 12 << 10


def fill_with_one_byte_frames(sock, conn):
    """Send 1-byte DATA frames for conn, within the window, until the peer
    has stopped acknowledging (its socket towards the non-reader is full and
    the rest waits in its own memory). Returns the payload bytes it holds but
    has not acknowledged: at least what it queued in user space, at most that
    plus the ACK batch (1 MiB)."""
    one = frame({"op": OP_DATA, "conn": conn, "len": 1}, b"x")
    sent = acked = 0
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 120 * SLOW
    while time.monotonic() < deadline:
        if sent - acked + STEP <= WINDOW - (64 << 10):
            sock.settimeout(60 * SLOW)
            sock.sendall(one * STEP)
            sent += STEP
        sock.settimeout(0.2)
        try:
            f = read_frame(sock)
        except (socket.timeout, TimeoutError):
            f = ()
        if f is None:
            raise AssertionError("the peer closed the tunnel")
        if f and f[0]["op"] == OP_ACK and f[0]["conn"] == conn:
            acked += f[0]["bytes"]
            quiet_since = time.monotonic()
        elif sent - acked + STEP > WINDOW - (64 << 10) and \
                time.monotonic() - quiet_since > 2 * SLOW:
            return sent - acked
    raise AssertionError("the peer kept acknowledging (sent %d, acked %d)" % (sent, acked))


def read_until(sock, pred, timeout, what):
    """Frames until pred(header) holds; returns that header."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = read_frame(sock)
        if f is None:
            raise AssertionError("the peer closed while waiting for %s" % what)
        if pred(f[0]):
            return f[0]
    raise AssertionError("no %s within %ss" % (what, timeout))


class NonReader:
    """A TCP server that accepts and never reads, with a small receive buffer,
    so that whatever is sent to it piles up in the sender."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class FakePublic:
    """Plays proxy_public for one proxy_private (plaintext): takes its HELLO,
    answers WELCOME, then does what the test says."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.sock = None

    def accept(self, timeout):
        self.lsock.settimeout(timeout)
        self.sock, _ = self.lsock.accept()
        self.sock.settimeout(timeout)
        hello, _ = read_frame(self.sock)
        assert hello["op"] == OP_HELLO, hello
        self.sock.sendall(frame({"op": OP_WELCOME, "version": 1, "window": 4 << 20,
                                 "heartbeat": 5}))
        return hello

    def build(self, conn, port):
        self.sock.sendall(frame({"op": OP_BUILD, "conn": conn, "app": "a",
                                 "target_host": "127.0.0.1", "target_port": port}))

    def close(self):
        for s in (self.sock, self.lsock):
            if s is not None:
                s.close()


class HostilePrivateTest(ProxyTest):
    """A fake private with the token, against the real proxy_public."""

    def test_one_byte_data_frames_cost_what_they_queue(self):
        self.start_public()
        app_port = free_port()
        tun = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(tun.close)
        tun.sendall(frame({"op": OP_HELLO, "version": 1, "token": self.token, "name": "evil",
                           "window": 4 << 20,
                           "apps": [{"name": "m", "public_port": app_port,
                                     "target_host": "127.0.0.1", "target_port": 9}]}))
        welcome = read_until(tun, lambda h: h["op"] in (OP_WELCOME,), 10 * SLOW, "WELCOME")
        self.assertTrue(welcome["apps"][0]["ok"], welcome)
        # WELCOME goes out just before the private is online (no BUILD_CONNECTION
        # may precede it): a client in between is refused as "offline".
        self.wait_online(private="evil", apps=["m"])
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", app_port))  # and never reads
        build = read_until(tun, lambda h: h["op"] == OP_BUILD, 10 * SLOW, "BUILD_CONNECTION")
        conn = build["conn"]
        tun.sendall(frame({"op": OP_CONNECTED, "conn": conn}))
        time.sleep(0.5)
        base = self.public.rss_kib()
        held = fill_with_one_byte_frames(tun, conn)
        growth = self.public.rss_kib() - base
        print("figure: one_byte_frames.public_rss_growth_kib = %d for %d KiB held"
              % (growth, held >> 10))
        self.assertTrue(self.public.alive())
        self.assertGreaterEqual(held, QUEUED_AT_LEAST + (1 << 20), "too little was queued")
        if harness.MODE == "release":  # sanitizer allocators keep memory their own way
            self.assertLess(growth, MEMORY_LIMIT_KIB,
                            "queueing %d KiB in 1-byte frames grew the public by %d KiB"
                            % (held >> 10, growth))


class HostilePublicTest(ProxyTest):
    """A fake public with the token, against the real proxy_private."""

    def start_against_fake(self, extra=()):
        fake = FakePublic()
        self.addCleanup(fake.close)
        self.start_private(port=fake.port, extra=["--insecure-plaintext"] + list(extra))
        fake.accept(20 * SLOW)
        return fake

    def test_one_byte_data_frames_cost_what_they_queue(self):
        sink = NonReader()
        self.addCleanup(sink.close)
        fake = self.start_against_fake()
        fake.build(1, sink.port)
        read_until(fake.sock, lambda h: h["op"] == OP_CONNECTED, 10 * SLOW, "CONNECTED")
        priv = self.procs[-1]
        time.sleep(0.5)
        base = priv.rss_kib()
        held = fill_with_one_byte_frames(fake.sock, 1)
        growth = priv.rss_kib() - base
        print("figure: one_byte_frames.private_rss_growth_kib = %d for %d KiB held"
              % (growth, held >> 10))
        self.assertTrue(priv.alive())
        self.assertGreaterEqual(held, QUEUED_AT_LEAST + (1 << 20), "too little was queued")
        if harness.MODE == "release":
            self.assertLess(growth, MEMORY_LIMIT_KIB,
                            "queueing %d KiB in 1-byte frames grew the private by %d KiB"
                            % (held >> 10, growth))

    def test_max_conns_refuses_the_rest(self):
        echo = self.server(apps.EchoServer)
        limit, extra = 20, 5
        fake = self.start_against_fake(extra=["--max-conns", str(limit)])
        for conn in range(1, limit + extra + 1):
            fake.build(conn, echo.port)
        connected, closed = set(), {}
        fake.sock.settimeout(20 * SLOW)
        deadline = time.monotonic() + 20 * SLOW
        while len(connected) + len(closed) < limit + extra and time.monotonic() < deadline:
            f = read_frame(fake.sock)
            self.assertIsNotNone(f, "the private closed the tunnel")
            h = f[0]
            if h["op"] == OP_CONNECTED:
                connected.add(h["conn"])
            elif h["op"] == OP_CLOSE:
                closed[h["conn"]] = h.get("reason", "")
        self.assertEqual(len(connected), limit, "connected: %s, closed: %s" % (connected, closed))
        self.assertEqual(len(closed), extra, closed)
        for reason in closed.values():
            self.assertIn("--max-conns", reason)
        # The connections under the limit carry data.
        first = min(connected)
        fake.sock.sendall(frame({"op": OP_DATA, "conn": first, "len": 5}, b"hello"))
        h = read_until(fake.sock, lambda h: h["op"] == OP_DATA and h["conn"] == first,
                       10 * SLOW, "the echo")
        self.assertEqual(h["len"], 5)
        self.procs[-1].wait_log(r"ev=conn_refused .*--max-conns 20.*refused_total=", 5 * SLOW)


if __name__ == "__main__":
    harness.main()
