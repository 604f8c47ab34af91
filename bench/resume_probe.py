#!/usr/bin/env python3
"""How long a tunnel outage holds connections up, for `make bench`.

    python3 bench/resume_probe.py BIN_DIR ECHO_PORT RESETS STALL_SECONDS

Starts proxy_public and proxy_private (TLS, the defaults) on loopback with a
relay between them that can reset the tunnel's TCP connection or let nothing
through, opens one connection to the echo app at ECHO_PORT through the tunnel
and, for every outage, measures the time from the link being usable again to
the first byte echoed on that same connection:
  - RESETS times: the relay resets the tunnel (as a NAT flush does); the link
    is usable at once, so this is detection + new TLS handshake + resume;
  - once: nothing passes for STALL_SECONDS (longer than the 15 s rule), then
    the relay lets bytes through again (and drops the dead link).
Prints "reset_ms=MEDIAN reset_max_ms=MAX stall_ms=MS ok=1", or "ok=0 why=..."."""
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time


class Relay:
    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.links, self.lock = [], threading.Lock()
        self.open = threading.Event()
        self.open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._link, args=(a,), daemon=True).start()

    def _link(self, a):
        self.open.wait()
        try:
            b = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            a.close()
            return
        b.settimeout(None)
        with self.lock:
            self.links.append((a, b))
        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    return
                self.open.wait()
                dst.sendall(d)
        except OSError:
            pass

    def cut(self):
        with self.lock:
            for pair in self.links:
                for s in pair:
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        # Wake the pump blocked in recv() first: the socket is
                        # only released, and the RST sent, when nobody uses it.
                        s.shutdown(socket.SHUT_RD)
                        s.close()
                    except OSError:
                        pass
            self.links = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def echo_ms(sock, since):
    """Send one byte, wait for it back; ms since `since` (monotonic) when it came."""
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise OSError("wrong echo")
    return (time.monotonic() - since) * 1000


def main():
    bin_dir, echo_port, resets, stall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4])
    tmp = tempfile.mkdtemp(prefix="resume-probe-")
    procs = []
    try:
        tport, wport, aport = free_port(), free_port(), free_port()
        token = os.urandom(16).hex()
        log = open(os.path.join(tmp, "log"), "wb")
        procs.append(subprocess.Popen([os.path.join(bin_dir, "proxy_public"), str(tport),
                                       str(wport), "--bind", "127.0.0.1", "--token", token,
                                       "--state-dir", os.path.join(tmp, "state")],
                                      stdout=log, stderr=log))
        time.sleep(0.5)
        relay = Relay(tport)
        procs.append(subprocess.Popen([os.path.join(bin_dir, "proxy_private"), "127.0.0.1",
                                       str(relay.port), "--token", token, "--name", "probe",
                                       "--known-hosts", os.path.join(tmp, "kh"), "--register",
                                       "e:%d:127.0.0.1:%d" % (aport, echo_port)],
                                      stdout=log, stderr=log))
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", aport), timeout=5)
                sock.settimeout(60)
                echo_ms(sock, time.monotonic())
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("ok=0 why=tunnel-not-up")
                    return 1
                time.sleep(0.2)
        times = []
        for _ in range(resets):
            relay.cut()
            times.append(echo_ms(sock, time.monotonic()))
            time.sleep(0.5)
        relay.open.clear()
        relay.cut()
        time.sleep(stall)
        t0 = time.monotonic()
        relay.open.set()
        stall_ms = echo_ms(sock, t0)
        print("reset_ms=%.0f reset_max_ms=%.0f stall_ms=%.0f ok=1" % (
            statistics.median(times), max(times), stall_ms))
        return 0
    except OSError as e:
        print("ok=0 why=%s" % str(e).replace(" ", "-"))
        return 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not os.environ.get("PROBE_KEEP"):
            subprocess.run(["rm", "-rf", tmp])
        else:
            print("kept", tmp, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
