#!/usr/bin/env python3
"""FTP apps through a real NAT (network namespaces from tests/netns_lib.sh;
only RFC 5737 addresses), with real programs at both ends:

    pub  (203.0.113.10, .11)         proxy_public (default --ftp-ports); the
                                     clients: curl, lftp, Python's ftplib
    rtr  (203.0.113.2 / 192.0.2.1)   masquerades home -> pub
    home (192.0.2.2)                 proxy_private, Debian's vsftpd on port 21

vsftpd has nothing set for the tunnel (no pasv_address, no port range): its
passive replies name 192.0.2.2, which nobody outside can reach, and its
active-mode connections go to whatever PORT says. Through the tunnel:
1. curl with EPSV (its default), with PASV (--disable-epsv) and in active
   mode (-P -), lftp (passive) and ftplib (passive and active) list the
   directory, download a 50 MiB file and upload one (sha256 checked each way);
2. ten transfers at once from two client addresses (203.0.113.10 and .11),
   passive and active mixed, each checksummed;
3. /list counts the control and data connections, and nothing was refused;
4. from outside, 203.0.113.11 cannot take the data port offered to .10's
   control connection (closed, counted; .10's transfer then works), and a
   PORT naming another address than the client's own is refused (no bounce).
Needs root, ip, nft, vsftpd, lftp and curl; without root it prints SKIPPED and
exits 0. Environment: BIN_DIR (default: repo top), PROXY_EXTRA_ARGS.
"""
import ftplib
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from nat_lib import Nat

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from helpers import ftpd  # noqa: E402

BIN_DIR = os.environ.get("BIN_DIR") or REPO
EXTRA = shlex.split(os.environ.get("PROXY_EXTRA_ARGS", ""))
TUNNEL, WEB, FTP_PUB = 6340, 6341, 2121
TOKEN = os.urandom(16).hex()
NAT = Nat("ft", "nat_ftp")
BIG = 50 << 20
SMALL = 4 << 20
URL = "ftp://203.0.113.10:%d/" % FTP_PUB


def sha(b):
    return hashlib.sha256(b).hexdigest()


def api(path):
    out = NAT.run_in("pub", ["curl", "-s", "--max-time", "5", "-H", "Authorization: Bearer "
                             + TOKEN, "http://203.0.113.10:%d%s" % (WEB, path)])
    return json.loads(out)


def app():
    return [a for a in api("/list")["apps"] if a["name"] == "nas"][0]


def curl(args, what, data_file=None):
    argv = ["curl", "-sS", "--max-time", "120"] + args
    r = subprocess.run(["ip", "netns", "exec", NAT.ns["pub"]] + argv, capture_output=True,
                       timeout=150)
    if r.returncode != 0:
        NAT.fail("%s: curl %s: %s" % (what, " ".join(args), r.stderr.decode(errors="replace")))
    return r.stdout


def main():
    if os.geteuid() != 0:
        print("SKIPPED: nat_ftp needs root (network namespaces, nft)")
        return 0
    for tool in ("ip", "nft", "vsftpd", "lftp", "curl"):
        if subprocess.run(["sh", "-c", "command -v %s || test -x /usr/sbin/%s" % (tool, tool)],
                          capture_output=True).returncode:
            print("SKIPPED: nat_ftp needs %s (sh tools/deps.sh test)" % tool)
            return 0
    tmp = "/tmp/%s" % NAT.id
    os.makedirs(tmp, exist_ok=True)
    ftp = None
    try:
        NAT.step("namespaces %s" % " ".join(NAT.ns.values()))
        NAT.sh("netns_make_nat")
        NAT.run_in("pub", ["ip", "addr", "add", "203.0.113.11/24", "dev", "vpub"])
        ftp = ftpd.Vsftpd(os.path.join(tmp, "ftp"), host="192.0.2.2", port=21,
                          netns=NAT.ns["home"], log_path=os.path.join(NAT.out, "vsftpd.log"))
        blob = os.urandom(BIG)
        ftp.put("pub/big.bin", blob)
        small = os.urandom(SMALL)
        ftp.put("pub/small.bin", small)
        up = os.urandom(BIG)
        up_path = os.path.join(tmp, "up.bin")
        with open(up_path, "wb") as f:
            f.write(up)
        pub = NAT.spawn("pub", "public", [
            os.path.join(BIN_DIR, "proxy_public"), str(TUNNEL), str(WEB), "--bind",
            "203.0.113.10", "--token", TOKEN, "--state-dir", tmp + "/state", "--log-level",
            "debug"] + EXTRA)
        NAT.wait_log(pub, r"ev=ready", 20, what="proxy_public ready")
        priv = NAT.spawn("home", "private", [
            os.path.join(BIN_DIR, "proxy_private"), "203.0.113.10", str(TUNNEL), "--token", TOKEN,
            "--name", "home", "--register", "nas:%d:192.0.2.2:21/ftp" % FTP_PUB,
            "--known-hosts", tmp + "/known_hosts", "--log-level", "info"] + EXTRA)
        NAT.wait_log(pub, r"ev=tunnel_up name=home client=203\.0\.113\.2:.*version=([5-9]|\d\d)",
                     30, what="the tunnel up from the router's address, version 5 or later")
        NAT.wait_log(pub, r"ev=app_registered app=nas protocol=ftp .*ftp_mode=rewrite", 10,
                     what="the FTP app")

        # 1. Every client, 50 MiB each way.
        clients = [("curl EPSV", []), ("curl PASV", ["--disable-epsv"]),
                   ("curl active", ["-P", "-"])]
        for name, opts in clients:
            t0 = time.monotonic()
            if b"big.bin" not in curl(opts + [URL + "pub/"], name + " list"):
                NAT.fail("%s: the listing has no big.bin" % name)
            got = curl(opts + [URL + "pub/big.bin"], name + " download")
            if sha(got) != sha(blob):
                NAT.fail("%s: downloaded %d bytes, checksum wrong" % (name, len(got)))
            rel = "up/%s.bin" % name.replace(" ", "_")
            curl(opts + ["-T", up_path, URL + rel], name + " upload")
            if sha(ftp.read(rel)) != sha(up):
                NAT.fail("%s: the upload arrived with another checksum" % name)
            NAT.step("1. %s: list, 50 MiB down and 50 MiB up, checksums right, %.1f s"
                     % (name, time.monotonic() - t0))
        t0 = time.monotonic()
        lf = os.path.join(tmp, "lftp.bin")
        r = subprocess.run(["ip", "netns", "exec", NAT.ns["pub"], "lftp", "-e",
                            "set net:max-retries 1; set net:timeout 30; set ftp:passive-mode on; "
                            "cls pub; get pub/big.bin -o %s; put %s -o up/lftp.bin; quit"
                            % (lf, up_path), "-p", str(FTP_PUB), "203.0.113.10"],
                           capture_output=True, timeout=150)
        if r.returncode != 0 or b"big.bin" not in r.stdout:
            NAT.fail("lftp: %s %s" % (r.stdout[-300:], r.stderr[-300:]))
        with open(lf, "rb") as f:
            if sha(f.read()) != sha(blob):
                NAT.fail("lftp: the download's checksum is wrong")
        if sha(ftp.read("up/lftp.bin")) != sha(up):
            NAT.fail("lftp: the upload's checksum is wrong")
        NAT.step("1. lftp (passive): list, 50 MiB down and up, checksums right, %.1f s"
                 % (time.monotonic() - t0))

        NAT.enter("pub")  # this process's sockets are outside from here on
        for pasv in (True, False):
            t0 = time.monotonic()
            f = ftplib.FTP()
            f.connect("203.0.113.10", FTP_PUB, timeout=60)
            f.login()
            f.set_pasv(pasv)
            if "pub/big.bin" not in f.nlst("pub"):
                NAT.fail("ftplib: no pub/big.bin in the listing")
            h = hashlib.sha256()
            f.retrbinary("RETR pub/big.bin", h.update, blocksize=1 << 20)
            if h.hexdigest() != sha(blob):
                NAT.fail("ftplib pasv=%s: the download's checksum is wrong" % pasv)
            with open(up_path, "rb") as src:
                f.storbinary("STOR up/ftplib%d.bin" % pasv, src, blocksize=1 << 20)
            f.quit()
            if sha(ftp.read("up/ftplib%d.bin" % pasv)) != sha(up):
                NAT.fail("ftplib pasv=%s: the upload's checksum is wrong" % pasv)
            NAT.step("1. ftplib %s: list, 50 MiB down and up, checksums right, %.1f s"
                     % ("passive" if pasv else "active", time.monotonic() - t0))

        # 2. Ten at once from two addresses.
        before = app()
        results = {}

        def one(i):
            src = "203.0.113.%d" % (10 + i % 2)
            mode = (["--disable-epsv"], [], ["-P", src])[i % 3]
            try:
                argv = ["curl", "-sS", "--max-time", "120", "--interface", src] + mode + [
                    URL + "pub/small.bin"]
                r = subprocess.run(argv, capture_output=True, timeout=150)
                results[i] = (r.returncode, sha(r.stdout), r.stderr[-200:])
            except Exception as e:  # noqa: BLE001 (reported below)
                results[i] = (-1, "", repr(e))
        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(160)
        for i in range(10):
            rc, digest, err = results.get(i, (-2, "", "did not finish"))
            if rc != 0 or digest != sha(small):
                NAT.fail("parallel transfer %d: rc %s, checksum %s, %s" % (
                    i, rc, "right" if digest == sha(small) else "wrong", err))
        after = app()
        NAT.step("2. 10 transfers at once from 203.0.113.10 and .11 (PASV, EPSV, active "
                 "mixed), 4 MiB each, all checksums right, %.1f s; data connections %d -> %d"
                 % (time.monotonic() - t0, before["total_data_connections"],
                    after["total_data_connections"]))
        if after["total_data_connections"] - before["total_data_connections"] != 10:
            NAT.fail("/list counts %d new data connections, not 10" % (
                after["total_data_connections"] - before["total_data_connections"]))

        # 3. The counts.
        a = after
        NAT.step("3. /list: control %d, data %d, refused data %d, refused PORT %d, no port %d, "
                 "bytes in %d, out %d" % (a["total_connections"], a["total_data_connections"],
                                          a["refused_data_connections"],
                                          a["refused_port_commands"], a["no_data_port"],
                                          a["bytes_in"], a["bytes_out"]))
        if a["refused_data_connections"] or a["refused_port_commands"] or a["no_data_port"]:
            NAT.fail("something was refused: %s" % a)
        if a["bytes_out"] < 6 * BIG or a["bytes_in"] < 6 * BIG:
            NAT.fail("/list counts fewer bytes than were moved: %s" % a)
        # 4. Another outside address cannot take a data port, and no bounce.
        f = ftplib.FTP()
        f.connect("203.0.113.10", FTP_PUB, timeout=60, source_address=("203.0.113.10", 0))
        f.login()
        host, dport = ftplib.parse227(f.sendcmd("PASV"))
        thief = socket.socket()
        thief.bind(("203.0.113.11", 0))
        thief.settimeout(20)
        thief.connect((host, dport))
        try:
            got = thief.recv(100)
        except ConnectionResetError:
            got = b""
        thief.close()
        if got:
            NAT.fail("203.0.113.11 got %r from the data port offered to .10" % got)
        data = socket.create_connection((host, dport), timeout=20,
                                        source_address=("203.0.113.10", 0))
        f.sendcmd("TYPE A")
        f.putcmd("NLST pub")
        if not f.getresp().startswith("150"):
            NAT.fail("NLST after the theft did not start")
        listing = b""
        while True:
            chunk = data.recv(65536)
            if not chunk:
                break
            listing += chunk
        data.close()
        if b"pub/big.bin" not in listing or not f.getresp().startswith("226"):
            NAT.fail("the real client's listing after the theft: %r" % listing[:200])
        try:
            r = f.sendcmd("PORT 203,0,113,11,156,64")
            NAT.fail("a PORT naming 203.0.113.11 was accepted: %s" % r)
        except ftplib.error_perm as e:
            if not str(e).startswith("500"):
                NAT.fail("a PORT naming 203.0.113.11 got %s, not 500" % e)
        f.quit()
        a = app()
        if a["refused_data_connections"] != 1 or a["refused_port_commands"] != 1:
            NAT.fail("/list counts refused data %d, refused PORT %d (want 1 and 1)" % (
                a["refused_data_connections"], a["refused_port_commands"]))
        NAT.step("4. 203.0.113.11 refused on .10's data port (.10's listing then came), a PORT "
                 "naming 203.0.113.11 refused with 500; counted")
        for p, what in ((pub, "public"), (priv, "private")):
            if p.poll() is not None:
                NAT.fail("%s exited" % what)
        print("PASS: nat_ftp (curl EPSV/PASV/active, lftp, ftplib passive/active, 50 MiB each "
              "way, 10 at once from two addresses, a data port theft and an FTP bounce refused, "
              "vsftpd behind a masquerading NAT)")
        return 0
    finally:
        if ftp:
            ftp.close()
        NAT.cleanup()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
