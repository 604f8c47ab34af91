"""FTP servers for the tests (tests/test_ftp.py, tests/nat_ftp.py).

Vsftpd: Debian's vsftpd with a config of its own (anonymous downloads from
pub/, uploads to up/), on a loopback port chosen from free ports.  Nothing in
it knows about the tunnel: passive replies name the server's own address.

ScriptedFtp: a small hand-written server that misbehaves on purpose: replies
split into one-byte writes, multi-line replies, AUTH TLS answered with 234
and then everything relayed raw.
"""
import os
import shutil
import socket
import subprocess
import threading
import time

from helpers import apps


def have_vsftpd():
    return shutil.which("vsftpd") is not None or os.path.exists("/usr/sbin/vsftpd")


def vsftpd_bin():
    return shutil.which("vsftpd") or "/usr/sbin/vsftpd"


def free_tcp_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Vsftpd:
    """vsftpd on host:port serving root/ (pub/ to read, up/ to write)."""

    def __init__(self, workdir, host="127.0.0.1", port=None, extra=(), netns=None,
                 log_path=None):
        self.host = host
        self.root = os.path.join(workdir, "ftproot")
        os.makedirs(workdir, exist_ok=True)
        os.makedirs(os.path.join(self.root, "pub"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "up"), exist_ok=True)
        os.chmod(self.root, 0o555)               # vsftpd refuses a writable chroot
        os.chmod(os.path.join(self.root, "up"), 0o777)
        self.port = port or free_tcp_port(host)
        self.conf = os.path.join(workdir, "vsftpd.conf")
        lines = [
            "listen=YES", "listen_ipv6=NO", "listen_address=%s" % host,
            "listen_port=%d" % self.port, "background=NO",
            "anonymous_enable=YES", "local_enable=NO", "no_anon_password=YES",
            "anon_root=%s" % self.root, "write_enable=YES", "anon_upload_enable=YES",
            "anon_mkdir_write_enable=YES", "anon_other_write_enable=YES",
            "anon_world_readable_only=NO", "connect_from_port_20=NO",
            "seccomp_sandbox=NO", "xferlog_enable=NO", "max_clients=200", "max_per_ip=100",
            "secure_chroot_dir=%s" % self._empty_dir(workdir),
        ] + list(extra)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        argv = [vsftpd_bin(), self.conf]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.log = open(log_path or os.path.join(workdir, "vsftpd.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        if not netns:
            self._wait_up()

    @staticmethod
    def _empty_dir(workdir):
        d = os.path.join(workdir, "vsftpd-empty")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o555)
        return d

    def _wait_up(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("vsftpd exited with %s (config %s)" % (
                    self.proc.returncode, self.conf))
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("vsftpd did not answer on %s:%d" % (self.host, self.port))

    def put(self, rel, data):
        path = os.path.join(self.root, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        return path

    def read(self, rel):
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class ScriptedFtp(apps.AppServer):
    """Answers like an FTP server, in the ways a real one seldom does:
    - "PASV": a 227 written one byte at a time, inside a multi-line reply
      when multi is set; the data port sends DATA_BYTES and closes;
    - "EPSV": a 229, with a 220- banner-like text line first;
    - "AUTH TLS": 234, then every byte from the client is echoed raw (as a
      TLS server would not, but the point is that nothing is rewritten);
    - "QUIT": 221.  Anything else: 502."""

    DATA_BYTES = b"scripted data connection\n" * 100

    def __init__(self, multi=False):
        self.multi = multi
        self.data_peers = []
        self.tls = 0
        super().__init__()

    def _data_listener(self):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.settimeout(20)

        def serve():
            try:
                c, peer = ls.accept()
                with self.cond:
                    self.data_peers.append(peer)
                c.sendall(self.DATA_BYTES)
                c.close()
            except OSError:
                pass
            finally:
                ls.close()
        threading.Thread(target=serve, daemon=True).start()
        return ls.getsockname()[1]

    def handle(self, c):
        c.sendall(b"220 scripted\r\n")
        while True:
            line = apps.recv_line(c)
            if not line:
                return
            cmd = line.strip().upper()
            if cmd == b"PASV":
                p = self._data_listener()
                reply = b"227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n" % (p >> 8, p & 255)
                if self.multi:
                    reply = (b"227-Entering Passive Mode (127,0,0,1,%d,%d)\r\n"
                             b" more text (9,9,9,9,9,9)\r\n227 Done\r\n" % (p >> 8, p & 255))
                for i in range(len(reply)):
                    c.sendall(reply[i:i + 1])
                    time.sleep(0.001)
            elif cmd == b"EPSV":
                p = self._data_listener()
                c.sendall(b"229-Entering Extended Passive Mode\r\n"
                          b"229 Entering Extended Passive Mode (|||%d|)\r\n" % p)
            elif cmd.startswith(b"AUTH"):
                c.sendall(b"234 Proceed with negotiation.\r\n")
                with self.cond:
                    self.tls += 1
                while True:
                    d = c.recv(65536)
                    if not d:
                        return
                    c.sendall(d)
            elif cmd == b"QUIT":
                c.sendall(b"221 Goodbye.\r\n")
                return
            else:
                c.sendall(b"502 Not implemented.\r\n")
