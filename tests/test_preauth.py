"""Before authentication a connection to the tunnel port gets little: the TLS
handshake and HELLO must finish within one deadline however slowly bytes
trickle in (and whatever they are: bytes of a record that never completes,
empty records, KeyUpdates, half a frame header), more than 32 TLS records in a
row without data end the connection, and one source may hold only a few
unauthenticated connections, so strangers cannot take the slots a real private
proxy needs, even from many addresses."""
import os
import selectors
import socket
import subprocess
import threading
import time

import harness
from harness import ProxyTest, SLOW, TLS

PER_ADDR = 8  # PREAUTH_PER_SOURCE in proxy_public.c
TOOL = os.path.join(harness.REPO, "build", "tls_hostile")


def hostile(port, mode, interval_ms, max_ms, count=40):
    """Run tests/tools/tls_hostile.c; returns (closed, its output line)."""
    if not os.access(TOOL, os.X_OK):
        subprocess.run(["make", "-s", "-C", harness.REPO, "tools"], check=True,
                       timeout=120)
    p = subprocess.run([TOOL, "127.0.0.1", str(port), mode, str(interval_ms), str(max_ms),
                        str(count)], capture_output=True, text=True,
                       timeout=max_ms / 1000 + 30)
    if p.returncode not in (0, 1):
        raise AssertionError("tls_hostile %s failed (%d): %s %s" % (
            mode, p.returncode, p.stdout, p.stderr))
    return p.returncode == 0, p.stdout.strip()


class Tricklers:
    """Many sources, each keeping up to `per_source` connections to port that
    send the header of a TLS record announcing 16 KiB and then one byte every
    half second; a connection that gets closed is opened again (after a short
    pause). Runs in a thread until stop()."""

    def __init__(self, port, sources, per_source):
        self.port = port
        self.sources = sources
        self.per_source = per_source
        self.sel = selectors.DefaultSelector()
        self.open = {}          # socket -> (source, next byte time)
        self.want = {s: per_source for s in sources}
        self.stopping = threading.Event()
        self.max_open = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self, src):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((src, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.open[s] = [src, time.monotonic() + 0.2, False]
        self.sel.register(s, selectors.EVENT_READ)

    def _drop(self, s):
        src = self.open.pop(s)[0]
        self.sel.unregister(s)
        s.close()
        self.want[src] += 1

    def _run(self):
        last_fill = 0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_fill > 0.2:
                last_fill = now
                for src in self.sources:
                    while self.want[src] > 0:
                        self.want[src] -= 1
                        self._connect(src)
            self.max_open = max(self.max_open, len(self.open))
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    if key.fileobj.recv(4096) != b"":
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._drop(key.fileobj)
            now = time.monotonic()
            for s, st in list(self.open.items()):
                if now < st[1]:
                    continue
                st[1] = now + 0.5
                try:
                    s.send(b"\x42" if st[2] else b"\x16\x03\x01\x40\x00")
                    st[2] = True
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop(s)
        for s in list(self.open):
            s.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(10)


class PreauthTest(ProxyTest):
    def setUp(self):
        super().setUp()
        self.start_public()

    def stranger(self, addr="127.0.0.3"):
        s = socket.socket()
        self.addCleanup(s.close)
        s.settimeout(30 * SLOW)
        s.bind((addr, 0))
        s.connect(("127.0.0.1", self.tunnel_port))
        return s

    def test_trickling_handshake_is_cut_at_the_deadline(self):
        """A TLS record header announcing 16 KiB, then one byte every second:
        the public closes the connection (10 s deadline), whatever keeps
        arriving."""
        s = self.stranger()
        s.sendall(b"\x16\x03\x01\x40\x00")
        closed = False
        for _ in range(int(40 * SLOW)):
            try:
                s.sendall(b"\x00")
                s.settimeout(1)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        self.assertTrue(closed, "a trickling handshake was kept open for %ss" % (40 * SLOW))
        self.public.wait_log(r"ev=handshake_failed", 5 * SLOW)
        self.assertTrue(self.public.alive())

    def trickle_after_tls(self, mode):
        if not TLS:
            self.skipTest("the tunnel runs without TLS in this suite run")
        closed, line = hostile(self.tunnel_port, mode, 500, int(40000 * SLOW))
        self.assertTrue(closed, "after the TLS handshake, %s every 0.5 s kept the pre-auth "
                        "connection open: %s" % (mode, line))
        self.public.wait_log(r"ev=handshake_failed .*handshake not finished in time",
                             5 * SLOW)
        self.assertTrue(self.public.alive())

    def test_record_that_never_completes_is_cut(self):
        """After the handshake, a record header announcing 16 KiB and then one
        byte of it every half second: cut at the deadline."""
        self.trickle_after_tls("partial")

    def test_empty_records_are_cut(self):
        """An empty application-data record every half second (each one
        shorter than the limit of 32 in a row): cut at the deadline anyway."""
        self.trickle_after_tls("empty")

    def test_key_updates_are_cut(self):
        """A KeyUpdate every half second instead of HELLO: cut at the deadline."""
        self.trickle_after_tls("keyupdate")

    def test_burst_of_records_without_data_is_refused(self):
        """40 empty records at once (then a data byte): refused at once for
        having more than 32 in a row without data."""
        if not TLS:
            self.skipTest("the tunnel runs without TLS in this suite run")
        closed, line = hostile(self.tunnel_port, "burst", 500, int(8000 * SLOW), count=40)
        self.assertTrue(closed, "40 records without data were taken: %s" % line)
        self.public.wait_log(r"ev=handshake_failed .*more than 32 TLS records in a row "
                             r"without data", 5 * SLOW)

    def test_per_address_limit_leaves_room_for_others(self):
        held = [self.stranger() for _ in range(PER_ADDR)]
        self.assertEqual(len(held), PER_ADDR)
        # The next one from the same address is closed at once.
        extra = self.stranger()
        extra.settimeout(10 * SLOW)
        try:
            got = extra.recv(1)
        except (ConnectionResetError, socket.timeout):
            got = b""
        self.assertEqual(got, b"", "connection over the per-address limit was served")
        self.public.wait_log(r"ev=tunnel_refused.*unauthenticated", 5 * SLOW)
        # A real private from another address (127.0.0.1) still gets in.
        self.start_private()
        self.wait_online()

    def test_many_trickling_sources_do_not_lock_out_the_private(self):
        """256 source addresses (127.0.0.2 upwards), each keeping 8 trickling
        handshakes open and reopening every one that is cut: the real private
        with the right token still gets in, and keeps working."""
        sources = ["127.0.%d.%d" % ((i + 2) // 256, (i + 2) % 256) for i in range(256)]
        flood = Tricklers(self.tunnel_port, sources, PER_ADDR)
        self.addCleanup(flood.stop)
        harness.wait_until(lambda: flood.max_open >= 500, 30 * SLOW,
                           "the trickling connections to be open")
        time.sleep(2)
        self.start_private()
        self.wait_online(timeout=40 * SLOW)
        self.assertGreaterEqual(flood.max_open, 500, "the flood never got going")
        self.assertTrue(self.public.alive())


class PlaintextPreauthTest(ProxyTest):
    """The same deadline without TLS: half a frame header, then a byte every
    half second."""

    def test_half_frame_header_is_cut(self):
        self.start_public(extra=["--insecure-plaintext"])
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.3", 0))
        s.connect(("127.0.0.1", self.tunnel_port))
        s.sendall(b"\x00\x00")           # half of the 4-byte length
        closed = False
        deadline = time.monotonic() + 40 * SLOW
        # The rest of a length of 256, then the header's first byte and
        # JSON whitespace, one byte every half second.
        trickle = [b"\x01", b"\x00", b"{"]
        while time.monotonic() < deadline:
            try:
                s.sendall(trickle.pop(0) if trickle else b" ")
                s.settimeout(0.5)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        self.assertTrue(closed, "a trickled frame header was kept open for %ss" % (40 * SLOW))
        self.public.wait_log(r"ev=handshake_failed .*handshake not finished in time", 5 * SLOW)
        self.assertTrue(self.public.alive())


if __name__ == "__main__":
    harness.main()
