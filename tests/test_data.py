"""Data through the tunnel: bulk with checksums, many connections, half-close,
and a client that never reads (flow control)."""
import hashlib
import os
import random
import socket
import threading
import time

import harness
from harness import ProxyTest, apps, connect, free_port, recv_exact, SLOW


def run_threads(targets, timeout):
    """Run callables in threads; re-raise the first exception; bounded join."""
    errors = []
    results = [None] * len(targets)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: B902 - reported to the test
            errors.append("thread %d: %r" % (i, e))

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True)
               for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    if hung:
        errors.append("%d of %d threads still running after %ss" % (hung, len(threads), timeout))
    if errors:
        raise AssertionError("; ".join(errors[:10]))
    return results


class DataTest(ProxyTest):
    def setup_apps(self, servers):
        """public + private, one --register app per (name, server)."""
        self.start_public()
        ports = {}
        specs = []
        for name, srv in servers.items():
            ports[name] = free_port()
            specs.append("%s:%d:127.0.0.1:%d" % (name, ports[name], srv.port))
        self.start_private(register=specs)
        self.wait_online(apps=list(servers))
        return ports

    def test_bulk_echo_full_duplex(self):
        """BULK bytes each way on one connection, sent and echoed concurrently."""
        echo = self.server(apps.EchoServer)
        port = self.setup_apps({"echo": echo})["echo"]
        data = random.Random(1).randbytes(harness.BULK)
        want = hashlib.sha256(data).hexdigest()
        s = connect(port, timeout=60 * SLOW)
        self.addCleanup(s.close)
        n, got = harness.echo_stream(s, data, 200 * SLOW)
        self.assertEqual(n, len(data), "echoed byte count")
        self.assertEqual(got, want, "sha256 of the echoed stream differs")

    def test_bulk_sink_and_source_concurrently(self):
        """BULK bytes client->app (sink checks sha256) while BULK bytes app->client
        (source) on a second connection, at the same time."""
        sink = self.server(apps.SinkServer)
        source = self.server(apps.SourceServer)
        ports = self.setup_apps({"sink": sink, "source": source})
        up = random.Random(2).randbytes(harness.BULK)
        up_sha = hashlib.sha256(up).hexdigest()
        down_sha = hashlib.sha256(apps.pattern_bytes(harness.BULK, 3)).hexdigest()

        def upload():
            with connect(ports["sink"], timeout=60 * SLOW) as s:
                view = memoryview(up)
                for off in range(0, len(up), 1 << 18):
                    s.sendall(view[off:off + (1 << 18)])
                s.shutdown(socket.SHUT_WR)
                reply = harness.recv_all(s, limit=200).decode()
            return reply

        def download():
            with connect(ports["source"], timeout=60 * SLOW) as s:
                s.sendall(b"%d 3\n" % harness.BULK)
                h = hashlib.sha256()
                n = 0
                while True:
                    chunk = s.recv(1 << 18)
                    if not chunk:
                        break
                    h.update(chunk)
                    n += len(chunk)
            return n, h.hexdigest()

        reply, (n, got) = run_threads([upload, download], 200 * SLOW)
        self.assertEqual(reply, "%d %s\n" % (len(up), up_sha),
                         "sink app's count/sha256 of the uploaded bytes")
        self.assertEqual(n, harness.BULK, "downloaded byte count")
        self.assertEqual(got, down_sha, "sha256 of the downloaded bytes")

    def test_200_concurrent_connections(self):
        """200 connections open at once, each sending distinct data in interleaved
        rounds and checking its own echo."""
        echo = self.server(apps.EchoServer)
        port = self.setup_apps({"echo": echo})["echo"]
        count, rounds, size = 200, 8, 4096
        socks = []
        for i in range(count):
            socks.append(connect(port, timeout=60 * SLOW))
        for s in socks:
            self.addCleanup(s.close)
        barrier = threading.Barrier(count, timeout=60 * SLOW)

        def worker(i):
            def run():
                s = socks[i]
                rng = random.Random(1000 + i)
                barrier.wait()
                for r in range(rounds):
                    msg = b"%05d:%02d:" % (i, r) + rng.randbytes(size)
                    s.sendall(msg)
                    got = recv_exact(s, len(msg))
                    if got != msg:
                        raise AssertionError("connection %d round %d got other bytes (%r...)"
                                             % (i, r, got[:12]))
                s.shutdown(socket.SHUT_WR)
                rest = s.recv(10)
                if rest:
                    raise AssertionError("connection %d: extra bytes %r" % (i, rest))
                return True
            return run

        run_threads([worker(i) for i in range(count)], 120 * SLOW)
        # Every connection went through to the app, and /list counted them.
        self.assertEqual(echo.accepted, count)
        app = self.find(self.list()["apps"], "echo")
        self.assertGreaterEqual(app["total_connections"], count, app)

    def test_half_close_client_first(self):
        """Client shuts down its write side; the app's reply (sent only after it
        saw end of stream) still arrives in full."""
        sink = self.server(apps.SinkServer)
        port = self.setup_apps({"sink": sink})["sink"]
        data = os.urandom(1 << 20)
        with connect(port) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = harness.recv_all(s, limit=200).decode()
        self.assertEqual(reply, "%d %s\n" % (len(data), harness.sha256(data)))

    def test_half_close_app_first(self):
        """The app sends a greeting and shuts down its write side first; the client
        sees end of stream, keeps sending, and the app receives everything."""
        greet = self.server(apps.GreetThenReadServer)
        port = self.setup_apps({"greet": greet})["greet"]
        data = os.urandom(1 << 20)
        with connect(port) as s:
            got = harness.recv_all(s, limit=1000)
            self.assertEqual(got, greet.greeting, "client should get the greeting then EOF")
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            # The app now closes; the client's connection must end too.
            self.assertTrue(harness.closed_by_peer(s, 15 * SLOW),
                            "client connection not closed after both sides ended")
        with greet.cond:
            ok = greet.cond.wait_for(lambda: greet.results, 15 * SLOW)
        self.assertTrue(ok, "app never saw end of stream")
        self.assertEqual(greet.results[0], (len(data), harness.sha256(data)),
                         "app received other bytes than the client sent after the half-close")

    def test_reader_that_never_reads(self):
        """One client never reads while the app floods it: the other connection
        keeps working, and both proxies' memory stays bounded (backpressure)."""
        flood = self.server(apps.FloodServer)
        echo = self.server(apps.EchoServer)
        ports = self.setup_apps({"flood": flood, "echo": echo})
        private = [p for p in self.procs if p.name == "private-home"][0]
        base = {p.name: p.rss_kib() for p in (self.public, private)}
        limit_kib = 100 * 1024
        stuck = connect(ports["flood"], timeout=30 * SLOW)
        self.addCleanup(stuck.close)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # Wait until the flood stops: the app's send() blocks once every buffer
        # between it and the client is full. Meanwhile the echo app must work.
        last, still_since, rounds = -1, None, 0
        deadline = time.monotonic() + 60 * SLOW
        growth = {}
        while True:
            self.echo_roundtrip(ports["echo"])
            rounds += 1
            for p in (self.public, private):
                growth[p.name] = p.rss_kib() - base[p.name]
                self.assertLess(growth[p.name], limit_kib,
                                "%s RSS grew by %d KiB while a client did not read "
                                "(flood app sent %d bytes)" % (p.name, growth[p.name],
                                                               flood.sent))
            with flood.cond:
                sent = flood.sent
            now = time.monotonic()
            if sent != last:
                last, still_since = sent, now
            elif sent > 0 and now - still_since > 2:
                break
            self.assertLess(now, deadline, "the flood never stalled: the app could send "
                            "%d bytes to a client that reads nothing" % sent)
            time.sleep(0.1)
        self.assertGreater(rounds, 1)
        # The stalled connection is intact: it delivers the exact stream in order.
        stuck.settimeout(30 * SLOW)
        head = recv_exact(stuck, 1 << 20)
        self.assertEqual(head, flood.block, "the flooded client got other bytes")
        # And the other connection still works after all that.
        self.echo_roundtrip(ports["echo"], os.urandom(100000))


if __name__ == "__main__":
    harness.main()
