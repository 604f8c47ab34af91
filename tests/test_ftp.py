#!/usr/bin/env python3
"""FTP apps (protocol version 5) on loopback, real binaries, real clients:
Debian's vsftpd at home (no configuration for the tunnel) reached through the
public port with curl (EPSV, PASV, active) and Python's ftplib; a second
address (127.0.0.2) trying to take a data port; PORT/EPRT naming another
address (FTP bounce); the data port range running out and coming back; a
scripted server that splits its replies byte by byte, writes multi-line ones
and switches to TLS; the fixed passive-range mode for FTPS; and a private of
an older version refused.  Skips the vsftpd cases when vsftpd is missing
(tools/deps.sh installs it)."""
import ftplib
import hashlib
import io
import os
import random
import re
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import (OP_HELLO, OP_WELCOME, SLOW, ProxyTest, frame, free_port, read_frame,
                     wait_until)
from helpers import ftpd

MiB = 1 << 20
SIZE = {"release": 8, "asan": 2, "tsan": 1}[harness.MODE] * MiB


def md5(b):
    return hashlib.md5(b).hexdigest()


def free_range(n):
    return harness.free_port_range(n)


class FtpBase(ProxyTest):
    def start_ftp_tunnel(self, target_port, spec_suffix="/ftp", ftp_ports=None, extra_pub=(),
                         extra_priv=()):
        lo, hi = ftp_ports or free_range(8)
        self.ftp_lo, self.ftp_hi = lo, hi
        self.start_public(extra=["--ftp-ports", "%d-%d" % (lo, hi)] + list(extra_pub))
        self.app_port = free_port()
        self.start_private(register=["ftp:%d:127.0.0.1:%d%s" % (self.app_port, target_port,
                                                                 spec_suffix)],
                           extra=list(extra_priv))
        self.wait_online(apps=["ftp"])
        return self.app_port

    def app(self, name="ftp"):
        return self.find(self.list()["apps"], name)

    def curl(self, *args, data=None, timeout=None):
        r = subprocess.run(["curl", "-sS", "--max-time", str(int(30 * SLOW))] + list(args),
                           input=data, capture_output=True, timeout=timeout or 40 * SLOW)
        self.assertEqual(r.returncode, 0, "curl %s: %s" % (" ".join(args), r.stderr.decode()))
        return r.stdout


@unittest.skipUnless(ftpd.have_vsftpd(), "vsftpd is not installed (tools/deps.sh)")
class FtpVsftpdTest(FtpBase):
    def setUp(self):
        super().setUp()
        self.ftp = self.server(ftpd.Vsftpd, self.tmp)
        self.blob = os.urandom(SIZE)
        self.ftp.put("pub/blob.bin", self.blob)

    def test_curl_epsv_pasv_active_and_counts(self):
        """curl lists, downloads and uploads through the public port with
        EPSV (its default), PASV (--disable-epsv) and active mode (-P -);
        every byte arrives, the control and data connections are counted in
        /list and /metrics, and every data port is free again at the end."""
        port = self.start_ftp_tunnel(self.ftp.port)
        url = "ftp://127.0.0.1:%d/" % port
        for mode in ([], ["--disable-epsv"], ["-P", "-"]):
            listing = self.curl(*mode, url + "pub/")
            self.assertIn(b"blob.bin", listing, mode)
            self.assertEqual(md5(self.curl(*mode, url + "pub/blob.bin")), md5(self.blob), mode)
            up = os.urandom(SIZE // 2)
            name = "up/%s.bin" % ("active" if mode == ["-P", "-"] else mode and "pasv" or "epsv")
            self.curl(*mode, "-T", "-", url + name, data=up)
            self.assertEqual(md5(self.ftp.read(name)), md5(up), mode)
        a = self.app()
        self.assertEqual((a["protocol"], a["ftp_mode"]), ("ftp", "rewrite"), a)
        self.assertEqual(a["total_connections"], 9, a)       # one control per curl
        self.assertEqual(a["total_data_connections"], 9, a)  # list, get, put each
        self.assertGreaterEqual(a["bytes_out"], 3 * SIZE, a)
        self.assertGreaterEqual(a["bytes_in"], 3 * SIZE // 2, a)
        wait_until(lambda: self.app()["active_data_connections"] == 0 and
                   self.app()["active_connections"] == 0, 10 * SLOW, "connections closed")
        st, text = self.api("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertIn('nat_ftp_app_data_connections_total{app="ftp"} 9', text)
        self.assertIn('nat_app_connections_total{app="ftp"} 9', text)
        self.assertIn('nat_ftp_app_refused_total{app="ftp",reason="bounce"} 0', text)
        # No passive port left behind: all of them can be bound again.
        for p in range(self.ftp_lo, self.ftp_hi + 1):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", p))
            except OSError as e:
                self.fail("data port %d still taken: %s" % (p, e))
            finally:
                s.close()

    def test_ftplib_passive_and_active_on_one_control_connection(self):
        """One ftplib session: several downloads and uploads, passive then
        active, pipelined over the same control connection."""
        port = self.start_ftp_tunnel(self.ftp.port)
        f = ftplib.FTP()
        f.connect("127.0.0.1", port, timeout=20 * SLOW)
        self.addCleanup(f.close)
        f.login()
        for pasv in (True, False, True):
            f.set_pasv(pasv)
            self.assertIn("pub/blob.bin", f.nlst("pub"))
            got = io.BytesIO()
            f.retrbinary("RETR pub/blob.bin", got.write)
            self.assertEqual(md5(got.getvalue()), md5(self.blob), "pasv=%s" % pasv)
            up = os.urandom(100000)
            f.storbinary("STOR up/f%d.bin" % pasv, io.BytesIO(up))
            self.assertEqual(self.ftp.read("up/f%d.bin" % pasv), up)
        f.quit()
        self.assertEqual(self.app()["total_data_connections"], 9)

    def test_data_port_taken_from_another_address_is_refused(self):
        """A PASV's data port is accepted only from the control connection's
        client address: 127.0.0.2 connecting first gets nothing (closed at
        once, counted, logged) and the real client still gets its listing."""
        port = self.start_ftp_tunnel(self.ftp.port)
        f = ftplib.FTP()
        f.connect("127.0.0.1", port, timeout=20 * SLOW)
        self.addCleanup(f.close)
        f.login()
        resp = f.sendcmd("PASV")
        host, dport = ftplib.parse227(resp)
        self.assertEqual(host, "127.0.0.1")
        self.assertTrue(self.ftp_lo <= dport <= self.ftp_hi, resp)
        thief = socket.socket()
        thief.bind(("127.0.0.2", 0))
        thief.settimeout(10 * SLOW)
        thief.connect(("127.0.0.1", dport))
        self.assertEqual(harness.recv_all(thief), b"", "the thief got data")
        thief.close()
        self.public.wait_log(r"ev=ftp_data_refused app=ftp port=%d from=127\.0\.0\.2" % dport,
                             5 * SLOW)
        data = socket.create_connection(("127.0.0.1", dport), timeout=10 * SLOW)
        f.sendcmd("TYPE A")
        f.putcmd("NLST pub")
        self.assertTrue(f.getresp().startswith("150"))
        listing = harness.recv_all(data)
        data.close()
        self.assertIn(b"pub/blob.bin", listing)
        self.assertTrue(f.getresp().startswith("226"))
        self.assertEqual(self.app()["refused_data_connections"], 1)

    def test_port_naming_another_address_is_refused(self):
        """FTP bounce (RFC 2577): a PORT or EPRT naming an address other than
        the client's own, or a privileged port, gets a 500 reply and never
        reaches the server; a good PORT after them works."""
        port = self.start_ftp_tunnel(self.ftp.port)
        f = ftplib.FTP()
        f.connect("127.0.0.1", port, timeout=20 * SLOW)
        self.addCleanup(f.close)
        f.login()
        for cmd in ("PORT 127,0,0,2,200,1", "EPRT |1|192.0.2.9|40000|", "PORT 127,0,0,1,0,25",
                    "eprt |2|2001:db8::1|40000|"):
            with self.assertRaises(ftplib.error_perm) as cm:
                f.sendcmd(cmd)
            self.assertTrue(str(cm.exception).startswith("500"), str(cm.exception))
        self.public.wait_log(r"ev=ftp_bounce_refused app=ftp client=127\.0\.0\.1 "
                             r"named=127\.0\.0\.2:51201", 5 * SLOW)
        # A Telnet IAC NOP in front (which some servers skip) hides nothing.
        f.sock.sendall(b"\xff\xf1PORT 127,0,0,2,200,2\r\n")
        with self.assertRaises(ftplib.error_perm) as cm:
            f.getresp()
        self.assertTrue(str(cm.exception).startswith("500"), str(cm.exception))
        with self.assertRaises(ftplib.error_perm) as cm:
            f.sendcmd("PORT 127,0,0,1,300,1")    # unreadable: never passed on
        self.assertTrue(str(cm.exception).startswith("501"), str(cm.exception))
        f.set_pasv(False)
        got = io.BytesIO()
        f.retrbinary("RETR pub/blob.bin", got.write)
        self.assertEqual(md5(got.getvalue()), md5(self.blob))
        self.assertEqual(self.app()["refused_port_commands"], 5)

    def test_data_ports_run_out_and_come_back(self):
        """With one data port: a second client's PASV while the first holds it
        gets 425 (counted); when the first client leaves without using it,
        the port is free again within seconds."""
        one = free_range(1)
        port = self.start_ftp_tunnel(self.ftp.port, ftp_ports=one)
        a = ftplib.FTP()
        a.connect("127.0.0.1", port, timeout=20 * SLOW)
        a.login()
        self.assertEqual(ftplib.parse227(a.sendcmd("PASV"))[1], one[0])
        b = ftplib.FTP()
        b.connect("127.0.0.1", port, timeout=20 * SLOW)
        self.addCleanup(b.close)
        b.login()
        with self.assertRaises(ftplib.error_temp) as cm:
            b.sendcmd("PASV")
        self.assertTrue(str(cm.exception).startswith("425"), str(cm.exception))
        self.assertEqual(self.app()["no_data_port"], 1)
        a.close()  # leaves without connecting to the port
        wait_until(lambda: self._pasv_ok(b), 10 * SLOW, "the unused data port freed")

    def test_one_client_cannot_take_every_data_port(self):
        """One client address asking PASV over and over holds at most its
        share of --ftp-ports (all of a range of up to 16); each control
        connection at most 8 waiting ones."""
        port = self.start_ftp_tunnel(self.ftp.port, ftp_ports=free_range(20))
        got, refused = set(), 0
        for _ in range(3):
            f = ftplib.FTP()
            f.connect("127.0.0.1", port, timeout=20 * SLOW)
            self.addCleanup(f.close)
            f.login()
            for _ in range(8):
                try:
                    got.add(ftplib.parse227(f.sendcmd("PASV"))[1])
                except ftplib.error_temp as e:
                    self.assertTrue(str(e).startswith("425"), str(e))
                    refused += 1
        self.assertEqual((len(got), refused), (16, 8))
        self.assertEqual(self.app()["no_data_port"], 8)

    def _pasv_ok(self, f):
        try:
            f.sendcmd("PASV")
            return True
        except ftplib.error_temp:
            return False

    def test_fixed_passive_range_mode(self):
        """FTPS's fallback: the app registered with ftp_passive_ports, the
        server told the public address and that range (pasv_address,
        pasv_min_port, pasv_max_port); the control connection is relayed
        unchanged and the range port for port. A data connection from an
        address without a control connection is refused."""
        self.ftp.close()
        self.servers.remove(self.ftp)
        lo, hi = free_range(4)
        # At home on 127.0.0.3: the public side holds the range on 127.0.0.1.
        self.ftp = self.server(ftpd.Vsftpd, os.path.join(self.tmp, "fixed"), host="127.0.0.3",
                               extra=["pasv_address=127.0.0.1", "pasv_min_port=%d" % lo,
                                      "pasv_max_port=%d" % hi])
        self.ftp.put("pub/blob.bin", self.blob)
        self.start_public()
        self.start_private(extra=["--allow", "127.0.0.3/32:%d-%d" % (lo, hi),
                                  "--allow", "127.0.0.3:%d" % self.ftp.port])
        self.wait_online()
        app_port = free_port()
        st, body = self.api("POST", "/register", {
            "name": "ftps", "public_port": app_port, "target_host": "127.0.0.3",
            "target_port": self.ftp.port, "protocol": "ftp", "private": "home",
            "ftp_passive_ports": "%d-%d" % (lo, hi)})
        self.assertEqual(st, 201, body)
        self.wait_online(apps=["ftps"])
        thief = socket.socket()
        thief.bind(("127.0.0.2", 0))
        thief.settimeout(10 * SLOW)
        thief.connect(("127.0.0.1", lo))
        self.assertEqual(harness.recv_all(thief), b"")
        thief.close()
        got = self.curl("--disable-epsv", "ftp://127.0.0.1:%d/pub/blob.bin" % app_port)
        self.assertEqual(md5(got), md5(self.blob))
        a = self.app("ftps")
        self.assertEqual((a["ftp_mode"], a["ftp_passive_ports"]), ("fixed", "%d-%d" % (lo, hi)))
        self.assertEqual(a["total_data_connections"], 1, a)
        self.assertEqual(a["refused_data_connections"], 1, a)
        # Overlapping ranges and the data port pool are refused.
        st, body = self.api("POST", "/register", {
            "name": "other", "public_port": lo + 1, "target_host": "127.0.0.1",
            "target_port": 21, "private": "home"})
        self.assertEqual(st, 409, body)


class FtpScriptedTest(FtpBase):
    def test_split_and_multiline_replies_are_rewritten(self):
        """A 227 that arrives one byte at a time, and one inside a
        multi-line reply (with another address in its text), are rewritten;
        the multi-line 229 too; the data arrives whole."""
        for multi in (False, True):
            srv = self.server(ftpd.ScriptedFtp, multi=multi)
            if multi:
                self.start_private(name="home2", register=["ftp2:%d:127.0.0.1:%d/ftp" % (
                    free_port(), srv.port)])
                self.wait_online(private="home2", apps=["ftp2"])
                port = self.app("ftp2")["public_port"]
            else:
                port = self.start_ftp_tunnel(srv.port)
            c = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
            self.addCleanup(c.close)
            f = c.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220"))
            c.sendall(b"PASV\r\n")
            first = f.readline()
            m = re.search(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", first)
            self.assertTrue(m, first)
            dport = int(m.group(5)) * 256 + int(m.group(6))
            self.assertTrue(self.ftp_lo <= dport <= self.ftp_hi, first)
            if multi:
                self.assertEqual(f.readline(), b" more text (9,9,9,9,9,9)\r\n")
                self.assertEqual(f.readline(), b"227 Done\r\n")
            with socket.create_connection(("127.0.0.1", dport), timeout=10 * SLOW) as d:
                self.assertEqual(harness.recv_all(d), ftpd.ScriptedFtp.DATA_BYTES)
            c.sendall(b"epsv\r\n")
            self.assertEqual(f.readline(), b"229-Entering Extended Passive Mode\r\n")
            m = re.search(rb"\(\|\|\|(\d+)\|\)", f.readline())
            self.assertTrue(m and self.ftp_lo <= int(m.group(1)) <= self.ftp_hi)
            with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10 * SLOW) as d:
                self.assertEqual(harness.recv_all(d), ftpd.ScriptedFtp.DATA_BYTES)
            c.close()

    def test_public_address_goes_into_227(self):
        """--public-address (a server behind its own NAT): 227 replies carry
        it (nothing dials it here), 229 replies only the port, and the data
        port still listens on the address the client reached."""
        srv = self.server(ftpd.ScriptedFtp)
        port = self.start_ftp_tunnel(srv.port, extra_pub=["--public-address", "192.0.2.10"])
        c = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        self.addCleanup(c.close)
        f = c.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220"))
        c.sendall(b"PASV\r\n")
        m = re.search(rb"\(192,0,2,10,(\d+),(\d+)\)", f.readline())
        self.assertTrue(m, "the 227 reply does not carry --public-address")
        dport = int(m.group(1)) * 256 + int(m.group(2))
        with socket.create_connection(("127.0.0.1", dport), timeout=10 * SLOW) as d:
            self.assertEqual(harness.recv_all(d), ftpd.ScriptedFtp.DATA_BYTES)

    def test_auth_tls_is_detected_and_passed_through(self):
        """After AUTH TLS and its 234 nothing is rewritten any more (the
        bytes would be TLS records); the public side logs it and /list counts
        it, with the advice to use the fixed passive range."""
        srv = self.server(ftpd.ScriptedFtp)
        port = self.start_ftp_tunnel(srv.port)
        c = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        self.addCleanup(c.close)
        f = c.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220"))
        c.sendall(b"AUTH TLS\r\n")
        self.assertTrue(f.readline().startswith(b"234"))
        raw = b"\x16\x03\x01\x00\x05hello PORT 127,0,0,2,1,1\r\n227 (1,2,3,4,5,6)\r\n"
        c.sendall(raw)
        got = b""
        while len(got) < len(raw):
            got += f.read1(65536)
        self.assertEqual(got, raw)
        self.public.wait_log(r"ev=ftp_tls app=ftp client=127\.0\.0\.1 .*fixed passive range",
                             5 * SLOW)
        self.assertEqual(self.app()["tls_sessions"], 1)


class FtpVersionTest(ProxyTest):
    def test_private_older_than_ftp_is_refused_clearly(self):
        """A private of protocol version 4 (no FTP): an FTP app for it is
        refused with a clear error (the fixed-range mode, which needs
        nothing of it, and TCP apps still work)."""
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 4, "token": self.token,
                         "name": "old", "window": 1 << 20,
                         "ftp_apps": [{"name": "f0", "public_port": free_port(),
                                       "target_host": "127.0.0.1", "target_port": 21,
                                       "protocol": "ftp"}]}))
        h, _ = read_frame(s)
        self.assertEqual((h["op"], h["version"]), (OP_WELCOME, 4), h)
        self.assertEqual(h["apps"][0]["ok"], False, h)
        self.assertIn("protocol version 5", h["apps"][0]["error"])
        self.wait_online(private="old")  # WELCOME goes out before the registry has it
        st, body = self.api("POST", "/register", {
            "name": "f", "public_port": free_port(), "target_host": "127.0.0.1",
            "target_port": 21, "protocol": "ftp", "private": "old"})
        self.assertEqual(st, 409, body)
        self.assertIn("speaks protocol version 4, which has no FTP", body["error"])
        lo, hi = free_range(2)
        st, body = self.api("POST", "/register", {
            "name": "f", "public_port": free_port(), "target_host": "127.0.0.1",
            "target_port": 21, "protocol": "ftp", "private": "old",
            "ftp_passive_ports": "%d-%d" % (lo, hi)})
        self.assertEqual(st, 201, body)
        self.register("t", free_port(), 22, private="old")
        # An FTP operation on a version 4 tunnel ends it.
        s.sendall(frame({"op": harness.OP_FTP_TLS, "conn": 1}))
        self.assertTrue(harness.closed_by_peer(s, 10 * SLOW))
        self.public.wait_log(r"unexpected op FTP_TLS", 5 * SLOW)

    def test_bad_ftp_requests_from_a_private(self):
        """FTP_OPEN for a connection that is not an FTP control connection
        gets a refusal; a malformed one ends the tunnel."""
        self.start_public()
        s = harness.tunnel_socket(self.tunnel_port, 10 * SLOW)
        self.addCleanup(s.close)
        s.sendall(frame({"op": OP_HELLO, "version": 1, "max_version": 5, "token": self.token,
                         "name": "fake", "window": 1 << 20}))
        h, _ = read_frame(s)
        self.assertEqual((h["op"], h["version"]), (OP_WELCOME, 5), h)
        s.sendall(frame({"op": harness.OP_FTP_OPEN, "conn": 77, "req": 1, "mode": "passive",
                         "port": 40000}))
        while True:
            h, _ = read_frame(s)
            if h["op"] == harness.OP_FTP_OPENED:
                break
        self.assertEqual((h["conn"], h["req"], h["ok"], h["code"]), (77, 1, False, 425), h)
        s.sendall(frame({"op": harness.OP_FTP_OPEN, "conn": 77, "req": 2, "mode": "active",
                         "port": 40000, "host": "not-an-address"}))
        self.assertTrue(harness.closed_by_peer(s, 10 * SLOW))
        self.public.wait_log(r"member .host. is not an IP address", 5 * SLOW)


if __name__ == "__main__":
    harness.main()
