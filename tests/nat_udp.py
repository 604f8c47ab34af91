#!/usr/bin/env python3
"""UDP apps through a real NAT (network namespaces from tests/netns_lib.sh;
only RFC 5737 addresses), with real programs at both ends:

    pub  (203.0.113.10)              proxy_public; dig and a WireGuard peer
    rtr  (203.0.113.2 / 192.0.2.1)   masquerades home -> pub
    home (192.0.2.2)                 proxy_private, dnsmasq, wireguard-go

1. dnsmasq at home answers dig's queries sent to the public port (A and a
   large TXT record), many times over.
2. wireguard-go at home publishes its UDP port as a UDP app; a wireguard-go
   peer outside uses the public port as its endpoint. The handshake
   completes and a checksummed 16 MiB TCP transfer runs over the WireGuard
   interfaces (198.51.100.1 outside, 198.51.100.2 at home).
Needs root, ip, nft, dnsmasq, dig, wireguard-go, wg and /dev/net/tun; without
root it prints SKIPPED and exits 0.
Environment: BIN_DIR (default: repo top), PROXY_EXTRA_ARGS (both programs).
"""
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
BIN_DIR = os.environ.get("BIN_DIR") or REPO
EXTRA = shlex.split(os.environ.get("PROXY_EXTRA_ARGS", ""))
TUNNEL, WEB, DNS_PUB, WG_PUB, WG_HOME, XFER = 6330, 6331, 5300, 51900, 51820, 9000
TOKEN = os.urandom(16).hex()
NAT = Nat("ud", "nat_udp")
XFER_BYTES = 16 << 20
BIG_TXT = "x" * 250  # six of them: one answer of about 1.6 KB, more than one Ethernet frame


def api(path):
    out = NAT.run_in("pub", ["curl", "-s", "--max-time", "5", "-H", "Authorization: Bearer "
                             + TOKEN, "http://203.0.113.10:%d%s" % (WEB, path)])
    return json.loads(out)


def app(name):
    return [a for a in api("/list")["apps"] if a["name"] == name][0]


def dig(name, rtype):
    return NAT.run_in("pub", ["dig", "@203.0.113.10", "-p", str(DNS_PUB), name, rtype, "+short",
                              "+time=2", "+tries=3", "+ignore", "+bufsize=4096"], check=False).strip()


def wg_keys():
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout
    return priv.strip(), pub.strip()


def wg_up(ns, ifname, key_file, addr, peer_pub, allowed, listen=None, endpoint=None):
    """A wireguard-go interface in ns, configured with wg(8)."""
    p = NAT.spawn(ns, "wireguard-" + ns, ["wireguard-go", "-f", ifname],
                  env={"LOG_LEVEL": "verbose"})
    deadline = time.monotonic() + 10
    while not os.path.exists("/var/run/wireguard/%s.sock" % ifname):
        if time.monotonic() > deadline or p.poll() is not None:
            NAT.fail("wireguard-go %s did not start" % ifname)
        time.sleep(0.1)
    argv = ["wg", "set", ifname, "private-key", key_file]
    if listen:
        argv += ["listen-port", str(listen)]
    argv += ["peer", peer_pub, "allowed-ips", allowed]
    if endpoint:
        argv += ["endpoint", endpoint, "persistent-keepalive", "1"]
    NAT.run_in(ns, argv)
    NAT.run_in(ns, ["ip", "addr", "add", addr, "dev", ifname])
    NAT.run_in(ns, ["ip", "link", "set", ifname, "up"])
    return p


def serve_transfer(data):
    """At home, on the WireGuard address: send data to the first client."""
    NAT.enter("home")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("198.51.100.2", XFER))
    srv.listen(1)
    srv.settimeout(60)

    def run():
        try:
            c, _ = srv.accept()
            with c:
                c.sendall(data)
        except OSError:
            pass
        srv.close()
    threading.Thread(target=run, daemon=True).start()


def main():
    if os.geteuid() != 0:
        print("SKIPPED: nat_udp needs root (network namespaces, nft, /dev/net/tun)")
        return 0
    for tool in ("ip", "nft", "dnsmasq", "dig", "wireguard-go", "wg", "curl"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            print("SKIPPED: nat_udp needs %s (sh tools/deps.sh test)" % tool)
            return 0
    tmp = "/tmp/%s" % NAT.id
    os.makedirs(tmp, exist_ok=True)
    # Interface names are global to the UAPI socket folder: make them ours.
    wg_home, wg_out = "wgh%d" % (os.getpid() % 100000), "wgo%d" % (os.getpid() % 100000)
    try:
        NAT.step("namespaces %s" % " ".join(NAT.ns.values()))
        NAT.sh("netns_make_nat")
        dnsmasq = NAT.spawn("home", "dnsmasq", [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--bind-interfaces", "--listen-address=192.0.2.2", "--port=53", "--user=root",
            "--pid-file=", "--log-queries", "--log-facility=-", "--edns-packet-max=4096",
            "--address=/app.home.arpa/192.0.2.77",
            "--txt-record=big.home.arpa," + ",".join([BIG_TXT] * 6)])
        pub = NAT.spawn("pub", "public", [
            os.path.join(BIN_DIR, "proxy_public"), str(TUNNEL), str(WEB), "--bind",
            "203.0.113.10", "--token", TOKEN, "--state-dir", tmp + "/state", "--log-level",
            "debug"] + EXTRA)
        NAT.wait_log(pub, r"ev=ready", 20, what="proxy_public ready")
        priv = NAT.spawn("home", "private", [
            os.path.join(BIN_DIR, "proxy_private"), "203.0.113.10", str(TUNNEL), "--token", TOKEN,
            "--name", "home", "--register", "dns:%d:192.0.2.2:53/udp" % DNS_PUB,
            "--register", "wg:%d:127.0.0.1:%d/udp" % (WG_PUB, WG_HOME),
            "--known-hosts", tmp + "/known_hosts", "--log-level", "debug"] + EXTRA)
        NAT.wait_log(pub, r"ev=tunnel_up name=home client=203\.0\.113\.2:.*version=([3-9]|\d\d)",
                     30, what="the tunnel up from the router's address, version 3 or later")
        NAT.wait_log(pub, r"ev=app_registered app=wg protocol=udp", 10, what="the UDP apps")
        if dnsmasq.poll() is not None:
            NAT.fail("dnsmasq exited")

        # 1. DNS
        NAT.step("1. dig @203.0.113.10 -p %d app.home.arpa (dnsmasq at home)" % DNS_PUB)
        for i in range(20):
            got = dig("app.home.arpa", "A")
            if got != "192.0.2.77":
                NAT.fail("dig try %d answered %r, not 192.0.2.77" % (i, got))
        got = dig("big.home.arpa", "TXT")
        if got.count(BIG_TXT) != 6:
            NAT.fail("the large TXT answer came back as %r" % got[:200])
        a = app("dns")
        NAT.step("   20 A answers and a %d-byte TXT one; sessions %d, datagrams %d/%d, drops %s"
                 % (6 * len(BIG_TXT), a["total_sessions"], a["datagrams_in"], a["datagrams_out"],
                    a["drops"]))
        if a["datagrams_out"] < 21:
            NAT.fail("/list counts %d answers" % a["datagrams_out"])

        # 2. WireGuard
        NAT.step("2. wireguard-go at home behind the NAT, its port published as a UDP app")
        hk, hp = wg_keys()
        ok, op = wg_keys()
        for name, key in (("home.key", hk), ("out.key", ok)):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(key + "\n")
            os.chmod(os.path.join(tmp, name), 0o600)
        wg_up("home", wg_home, tmp + "/home.key", "198.51.100.2/24", op, "198.51.100.1/32",
              listen=WG_HOME)
        wg_up("pub", wg_out, tmp + "/out.key", "198.51.100.1/24", hp, "198.51.100.2/32",
              endpoint="203.0.113.10:%d" % WG_PUB)
        deadline = time.monotonic() + 30
        while True:
            hs = NAT.run_in("pub", ["wg", "show", wg_out, "latest-handshakes"]).split()
            if len(hs) == 2 and hs[1] != "0":
                break
            if time.monotonic() > deadline:
                NAT.fail("no WireGuard handshake through the tunnel within 30 s")
            time.sleep(0.2)
        NAT.step("   handshake done")
        data = os.urandom(XFER_BYTES)
        serve_transfer(data)
        NAT.enter("pub")
        t0 = time.monotonic()
        h = hashlib.sha256()
        n = 0
        with socket.create_connection(("198.51.100.2", XFER), timeout=60) as c:
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                h.update(d)
                n += len(d)
        secs = time.monotonic() - t0
        if n != XFER_BYTES or h.hexdigest() != hashlib.sha256(data).hexdigest():
            NAT.fail("the transfer over WireGuard got %d of %d bytes, checksum %s" % (
                n, XFER_BYTES, "right" if h.hexdigest() == hashlib.sha256(data).hexdigest()
                else "wrong"))
        a = app("wg")
        NAT.step("   16 MiB over WireGuard through the tunnel in %.1f s (%.0f Mbit/s), checksum "
                 "right; sessions %d, datagrams %d/%d, drops %s"
                 % (secs, XFER_BYTES * 8 / secs / 1e6, a["total_sessions"], a["datagrams_in"],
                    a["datagrams_out"], a["drops"]))
        for p, what in ((pub, "public"), (priv, "private")):
            if p.poll() is not None:
                NAT.fail("%s exited" % what)
        print("PASS: nat_udp (dig to dnsmasq, WireGuard handshake and 16 MiB over it, "
              "through a masquerading NAT)")
        return 0
    finally:
        NAT.cleanup()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
