"""Hostile bytes on the tunnel port: the public side ends that connection, logs
why, and keeps serving a good private.  Frames are written by hand from
docs/PROTOCOL.md: 4-byte big-endian header length, JSON header, payload.
With TLS on (the default) the frames travel inside a TLS 1.3 session opened by
Python's ssl module, so that they reach the frame parser; raw garbage is also
sent on plain TCP, to the TLS layer itself."""
import json
import socket
import struct

import harness
from harness import ProxyTest, frame, read_frame, SLOW, OP_HELLO, OP_WELCOME, OP_ERROR, PROTO_VERSION, \
    OP_APPS, OP_APPS_RESULT, \
    OP_PING, OP_DATA


class MalformedTest(ProxyTest):
    def setUp(self):
        super().setUp()
        self.app_port = self.setup_echo()

    def raw(self):
        """Plain TCP to the tunnel port (below TLS when TLS is on)."""
        s = socket.create_connection(("127.0.0.1", self.tunnel_port), timeout=10 * SLOW)
        self.addCleanup(s.close)
        return s

    def tun(self):
        """A tunnel connection whose bytes reach the frame parser."""
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        return s

    def hello(self, **kw):
        h = {"op": OP_HELLO, "version": 1, "token": self.token, "name": "evil",
             "window": 1 << 20}
        h.update(kw)
        return h

    def still_serving(self, what):
        self.assertTrue(self.public.alive(), "public died after %s:\n%s"
                        % (what, self.public.log_tail()))
        self.echo_roundtrip(self.app_port)
        body = self.list()
        pv = self.find(body["privates"], "home")
        self.assertTrue(pv and pv["online"], "good private dropped after %s: %s"
                        % (what, json.dumps(body)))

    def expect_closed(self, s, what):
        """The public closes the connection (any ERROR frame first is fine)."""
        self.assertTrue(harness.closed_by_peer(s, 10 * SLOW),
                        "public did not close the tunnel connection after %s" % what)

    def send_and_expect_close(self, data, what, half_close=False, raw=False):
        s = self.raw() if raw else self.tun()
        try:
            s.sendall(data)
            if half_close:
                if isinstance(s, harness.ssl.SSLSocket):
                    s = s.unwrap()  # TLS close_notify, then end of stream
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, harness.ssl.SSLError):
            pass
        self.expect_closed(s, what)
        s.close()
        self.still_serving(what)

    def test_garbage_bytes(self):
        for raw in (True, False):
            self.send_and_expect_close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10,
                                       "HTTP request (raw=%s)" % raw, raw=raw)
            self.send_and_expect_close(bytes(range(256)) * 64,
                                       "binary garbage (raw=%s)" % raw, raw=raw)
        self.send_and_expect_close(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                                   "truncated TLS ClientHello", half_close=True, raw=True)

    def test_huge_length(self):
        self.send_and_expect_close(struct.pack(">I", 0xFFFFFFFF) + b"{}", "length 0xFFFFFFFF")
        self.send_and_expect_close(struct.pack(">I", 16385) + b"{" * 16385,
                                   "header over 16384 before the handshake")
        self.send_and_expect_close(struct.pack(">I", 0), "header length 0")

    def test_truncated_frame(self):
        h = json.dumps(self.hello()).encode()
        self.send_and_expect_close(struct.pack(">I", len(h)) + h[:len(h) // 2],
                                   "truncated HELLO then end of stream", half_close=True)
        self.send_and_expect_close(b"\x00\x00", "truncated length", half_close=True)

    def test_bad_json(self):
        for bad in (b"{not json}", b"[1,2,3]", b'"hello"', b'{"op":1,"op":1}',
                    b'{"op":1} trailing', b'{"op":"1"}', b'{"version":1}'):
            self.send_and_expect_close(frame(bad), "header %r" % bad)

    def test_hello_bad_version(self):
        s = self.tun()
        s.sendall(frame(self.hello(version=PROTO_VERSION + 1)))
        f = read_frame(s)
        if f is not None:
            h, _ = f
            self.assertEqual(h.get("op"), OP_ERROR, "answer to a bad version: %r" % h)
            self.assertEqual(h.get("code"), "bad_version", h)
        self.expect_closed(s, "HELLO with a version from the future")
        self.public.wait_log(r"(?im)^.*lvl=(warn|error).*version.*$", 10 * SLOW)
        self.still_serving("HELLO with a version from the future")
        self.assertIsNone(self.find(self.list()["privates"], "evil"))

    def test_hello_bad_token(self):
        s = self.tun()
        s.sendall(frame(self.hello(token="x" * 32)))
        f = read_frame(s)
        if f is not None:
            self.assertEqual(f[0].get("op"), OP_ERROR, f)
            self.assertEqual(f[0].get("code"), "bad_token", f)
        self.expect_closed(s, "HELLO with a wrong token")
        self.still_serving("HELLO with a wrong token")

    def test_wrong_op_before_handshake(self):
        self.send_and_expect_close(frame({"op": OP_PING}), "PING before HELLO")
        self.send_and_expect_close(frame({"op": OP_DATA, "conn": 1, "len": 3}, b"abc"),
                                   "DATA before HELLO")
        self.send_and_expect_close(frame({"op": 99}), "unknown op before HELLO")
        self.send_and_expect_close(frame(self.hello(token=12345)), "token of the wrong type")

    def test_bad_frames_after_handshake(self):
        """A private that completed the handshake and then misbehaves loses its
        tunnel; the good private is not touched."""
        cases = [
            (struct.pack(">I", 0xFFFFFFFF), "length 0xFFFFFFFF after handshake"),
            (struct.pack(">I", 0), "length 0 after handshake"),
            (frame({"op": OP_DATA, "conn": 1, "len": 262145}), "DATA len over 262144"),
            (frame(b"garbage"), "non-JSON header"),
        ]
        for data, what in cases:
            s = self.tun()
            s.sendall(frame(self.hello()))
            f = read_frame(s)
            self.assertIsNotNone(f, "no WELCOME for a good HELLO")
            self.assertEqual(f[0].get("op"), OP_WELCOME, f)
            self.assertEqual(f[0].get("version"), 1, f)
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError, harness.ssl.SSLError):
                pass
            self.expect_closed(s, what)
            s.close()
            self.still_serving(what)

    def test_apps_ops_out_of_place(self):
        """APPS on a tunnel of a version without it, a malformed APPS,
        APPS_RESULT and NODES from the private end the tunnel; the good
        private stays."""
        cases = [
            (1, {"op": OP_APPS, "register": []}, "APPS on a version 1 tunnel"),
            (PROTO_VERSION, {"op": OP_APPS, "unregister": ["a b"]}, "APPS with a bad name"),
            (PROTO_VERSION, {"op": OP_APPS_RESULT, "apps": []}, "APPS_RESULT from a private"),
            (6, {"op": harness.OP_NODES, "nodes": []}, "NODES on a version 6 tunnel"),
            (PROTO_VERSION, {"op": harness.OP_NODES, "nodes": []}, "NODES from a private"),
        ]
        for version, op, what in cases:
            s = self.tun()
            s.sendall(frame(self.hello(max_version=version)))
            f = read_frame(s)
            self.assertEqual(f[0].get("op"), OP_WELCOME, f)
            self.assertEqual(f[0].get("version"), version, f)
            try:
                s.sendall(frame(op))
            except (BrokenPipeError, ConnectionResetError, harness.ssl.SSLError):
                pass
            self.expect_closed(s, what)
            s.close()
            self.still_serving(what)

    def test_deeply_nested_header(self):
        """Before any token: a HELLO header nested 2,000 deep (the most a
        parser that recurses per level would take, within the pre-auth size
        limit), and one nested 10,000 deep (over that limit): the tunnel is
        closed, the process lives."""
        for depth in (2000, 10000):
            nested = b'{"op":1,"x":' + b"[" * depth + b"]" * depth + b"}"
            self.send_and_expect_close(frame(nested), "a header nested %d deep" % depth)
        self.public.wait_log(r"nested deeper than 8 levels", 5 * SLOW)

    def test_many_idle_connections_then_good_private(self):
        """Connections that send nothing (or half a header) do not stop a new
        good private from completing its handshake. They come from another
        address (127.0.0.2), as a stranger's would: one address may hold only a
        few unauthenticated connections, so 20 from it are mostly refused."""
        idle = []
        for _ in range(20):
            s = socket.socket()
            self.addCleanup(s.close)
            s.settimeout(10 * SLOW)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", self.tunnel_port))
            idle.append(s)
        for i, s in enumerate(idle):
            if i % 2:
                try:
                    s.sendall(b"\x00\x00\x00")
                except OSError:
                    pass  # refused: over the per-address limit
        self.start_private(name="late", register=[])
        self.wait_online(private="late")
        self.still_serving("20 idle connections")


if __name__ == "__main__":
    harness.main()
