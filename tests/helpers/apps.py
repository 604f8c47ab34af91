"""Small app servers for the integration tests (Python standard library only).

Each server listens on 127.0.0.1 on a port chosen by the kernel, serves every
connection in its own daemon thread, and records what it saw so that a test can
check it.  They can also run on their own:

    python3 tests/helpers/apps.py echo|sink|source|flood|greet|udp-echo [--port N]

prints "port=N" on stdout and serves until killed.
"""
import hashlib
import random
import socket
import sys
import threading

CHUNK = 256 * 1024


def pattern_bytes(n, seed):
    """n deterministic pseudo-random bytes for seed (same on both ends)."""
    return random.Random(seed).randbytes(n)


def recv_line(sock, limit=4096):
    buf = b""
    while not buf.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            break
        buf += c
        if len(buf) > limit:
            break
    return buf


class AppServer:
    """Base: listening socket + accept thread + one thread per connection."""

    def __init__(self, host="127.0.0.1", port=0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::1": IPv6
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.accepted = 0
        self.errors = []
        self.conns = []
        self._closed = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                if self._closed:
                    c.close()
                    return
                self.accepted += 1
                self.conns.append(c)
                self.cond.notify_all()
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handle(c)
        except OSError as e:
            with self.cond:
                self.errors.append(repr(e))
                self.cond.notify_all()
        finally:
            try:
                c.close()
            except OSError:
                pass

    def handle(self, c):
        raise NotImplementedError

    def close(self):
        with self.cond:
            self._closed = True
            conns = list(self.conns)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EchoServer(AppServer):
    """Echoes every byte; on end of stream, half-closes after echoing all."""

    def handle(self, c):
        while True:
            data = c.recv(CHUNK)
            if not data:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(data)


class SinkServer(AppServer):
    """Reads until end of stream, then replies "<count> <sha256hex>\\n" and closes.

    The reply only starts after the client has half-closed, so it tests that
    a client's SHUT_WR travels through the tunnel without ending the other way."""

    def __init__(self, *a, **kw):
        self.results = []
        super().__init__(*a, **kw)

    def handle(self, c):
        h = hashlib.sha256()
        n = 0
        while True:
            data = c.recv(CHUNK)
            if not data:
                break
            h.update(data)
            n += len(data)
        c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
        with self.cond:
            self.results.append((n, h.hexdigest()))
            self.cond.notify_all()


class SourceServer(AppServer):
    """Reads one line "N SEED\\n", sends pattern_bytes(N, SEED), then closes."""

    def handle(self, c):
        line = recv_line(c).split()
        n, seed = int(line[0]), int(line[1])
        data = memoryview(pattern_bytes(n, seed))
        for off in range(0, n, CHUNK):
            c.sendall(data[off:off + CHUNK])
        c.shutdown(socket.SHUT_WR)
        # Wait for the client to close so that nothing is reset under it.
        while c.recv(CHUNK):
            pass


class GreetThenReadServer(AppServer):
    """Sends a greeting, half-closes its write side at once, then reads until
    end of stream and records what it received (reverse half-close)."""

    def __init__(self, greeting=b"hello from the app\n", *a, **kw):
        self.greeting = greeting
        self.results = []
        super().__init__(*a, **kw)

    def handle(self, c):
        c.sendall(self.greeting)
        c.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        n = 0
        while True:
            data = c.recv(CHUNK)
            if not data:
                break
            h.update(data)
            n += len(data)
        with self.cond:
            self.results.append((n, h.hexdigest()))
            self.cond.notify_all()


class FloodServer(AppServer):
    """Sends pattern bytes (seed 7) as fast as the peer takes them, counting
    how many send() accepted, until the connection fails or is closed."""

    def __init__(self, *a, **kw):
        self.sent = 0
        self.block = pattern_bytes(1 << 20, 7)
        super().__init__(*a, **kw)

    def handle(self, c):
        view = memoryview(self.block)
        off = 0
        while True:
            n = c.send(view[off:off + 65536])
            with self.cond:
                self.sent += n
            off = (off + n) % len(self.block)


class UdpServer:
    """A UDP app: one socket, one thread; reply(data, peer) says what to send
    back (a list of datagrams). Records what it saw per peer."""

    def __init__(self, host="127.0.0.1", port=0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.received = 0
        self.bytes = 0
        self.peers = {}
        self._closed = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(70000)
            except OSError:
                return
            if peer is None:  # shut down by close()
                return
            with self.lock:
                self.received += 1
                self.bytes += len(data)
                self.peers[peer] = self.peers.get(peer, 0) + 1
            for d in self.reply(data, peer):
                try:
                    self.sock.sendto(d, peer)
                except OSError:
                    pass

    def reply(self, data, peer):
        return []

    def send_to(self, data, peer):
        self.sock.sendto(data, peer)

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes recvfrom()
            except OSError:
                pass
            self.sock.close()


class UdpEchoServer(UdpServer):
    """Answers each datagram with its bytes reversed (so an answer is never
    the request looped back by mistake)."""

    def reply(self, data, peer):
        return [data[::-1]]


class UdpSinkServer(UdpServer):
    """Counts datagrams, answers nothing."""


SERVERS = {"echo": EchoServer, "sink": SinkServer, "source": SourceServer,
           "flood": FloodServer, "greet": GreetThenReadServer, "udp-echo": UdpEchoServer}


def main(argv):
    if len(argv) < 2 or argv[1] not in SERVERS:
        sys.stderr.write("usage: apps.py echo|sink|source|flood|greet|udp-echo [--port N]\n")
        return 2
    port = 0
    if len(argv) >= 4 and argv[2] == "--port":
        port = int(argv[3])
    srv = SERVERS[argv[1]](port=port)
    print("port=%d" % srv.port, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
