"""Before authentication a connection to the tunnel port gets little: the TLS
handshake and HELLO must finish within one deadline however slowly bytes
trickle in, and one address may hold only a few unauthenticated connections,
so strangers cannot take the slots a real private proxy needs."""
import socket

import harness
from harness import ProxyTest, SLOW

PER_ADDR = 8  # PREAUTH_PER_ADDR in proxy_public.c


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


if __name__ == "__main__":
    harness.main()
