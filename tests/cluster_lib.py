"""What the cluster tests (tests/test_cluster.py) run around proxy_public:
a real redis-server (alone, or a primary with a replica), redis-sentinel,
HAProxy with docs/haproxy-cluster.cfg, and the proxy_public nodes of one
cluster on their own loopback addresses (127.0.0.11 to 127.0.0.14).

Every process is started through the test's spawn() (tests/harness.py), so
it is logged to the test's folder and stopped when the test ends, whatever
happens; data directories live in the test's temporary directory.

Redis is spoken to over a raw RESP socket (no redis-cli, no client library):
Resp(port).cmd("HGET", "natproxy:apps", "web")."""
import http.client
import json
import os
import random
import re
import socket
import subprocess
import threading
import time

import harness
from harness import SLOW, wait_until

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
HAPROXY = "/usr/sbin/haproxy"
OPENSSL = "/usr/bin/openssl"
HAPROXY_CFG = os.path.join(harness.REPO, "docs", "haproxy-cluster.cfg")

# The nodes' own addresses (each node --bind's one), HAProxy's address
# towards them (its `source`, the nodes' --accept-proxy-from), and where
# HAProxy takes the clients.
NODE_ADDRS = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]
BALANCER = "127.0.0.3"
FRONT = "127.0.0.1"
MASTER_NAME = "mymaster"


def missing_tools():
    """The programs the cluster tests need that this machine lacks."""
    return [p for p in (REDIS_SERVER, REDIS_SENTINEL, HAPROXY, OPENSSL)
            if not os.access(p, os.X_OK)]


def skip_reason():
    """None, or the message a cluster test skips with."""
    miss = missing_tools()
    if not miss:
        return None
    return ("SKIPPED: needs %s (Debian's redis-server, redis-sentinel, haproxy and "
            "openssl; `sh tools/deps.sh test` installs them)" % ", ".join(miss))


_HELP = {}


def public_has_cluster(path):
    """Whether this proxy_public build knows --cluster (its --help says so)."""
    if path not in _HELP:
        try:
            p = subprocess.run([path, "--help"], capture_output=True, timeout=20 * SLOW,
                               env=dict(os.environ, **harness.SAN_ENV))
            _HELP[path] = (p.stdout + p.stderr).decode("utf-8", "replace")
        except (OSError, subprocess.TimeoutExpired):
            _HELP[path] = ""
    return "--cluster" in _HELP[path]


# --------------------------------------------------------------------------
# Ports

def _bindable(addr, port, udp=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        if not udp:
            s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_ports_on(addrs, n=1):
    """n consecutive ports (returns the first) free on every address of
    addrs, TCP and UDP, and on the wildcard, taken where harness's
    free_port_range() takes them (20000-29999: below the ephemeral range
    and the default --ftp-ports) and never handed out twice in this process.
    The nodes listen on the same tunnel, web and app port numbers, each on
    its own address."""
    rng = random.Random()
    for _ in range(500):
        lo = rng.randrange(20000, 29999 - n)
        ports = range(lo, lo + n)
        if any(p in harness._HANDED_OUT for p in ports):
            continue
        if all(_bindable(a, p) and _bindable(a, p, udp=True) for p in ports for a in addrs):
            harness._HANDED_OUT.update(ports)
            return lo
    raise AssertionError("no %d consecutive ports free on %s" % (n, ", ".join(addrs)))


def listening(addr, port):
    """A TCP listener on addr:port (read from /proc/net/tcp: a probe
    connection would count as a client)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(addr.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[1] == want:
                    return True
    except OSError:
        pass
    return False


def connect(addr, port, source=None, timeout=None):
    """A TCP connection to addr:port, from source when given."""
    return socket.create_connection((addr, port), timeout=timeout or 10 * SLOW,
                                    source_address=(source, 0) if source else None)


# --------------------------------------------------------------------------
# RESP, the Redis protocol: enough of it for commands and their answers.

class RespError(Exception):
    """An error answer (-ERR ...) from Redis."""


class Resp:
    """One connection to a Redis (or Sentinel) on 127.0.0.1:port."""

    MAX_BULK = 64 << 20

    def __init__(self, port, host="127.0.0.1", timeout=None):
        self.sock = socket.create_connection((host, port), timeout=timeout or 5 * SLOW)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._read()

    def _line(self):
        line = self.f.readline(1 << 16)
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection or sent a bad line: %r" % line)
        return line[:-2]

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            if n > self.MAX_BULK:
                raise ConnectionError("bulk of %d bytes" % n)
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("Redis closed the connection inside a bulk")
            return data[:-2].decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError("unknown RESP type in %r" % line)


def redis_cmd(port, *args, timeout=None):
    """One command on a connection of its own; its answer."""
    with Resp(port, timeout=timeout) as r:
        return r.cmd(*args)


def pairs(flat):
    """["k1", "v1", "k2", "v2"] -> {"k1": "v1", "k2": "v2"} (HGETALL, SENTINEL MASTER)."""
    return dict(zip(flat[0::2], flat[1::2]))


def info(port, section):
    """INFO SECTION as a dict."""
    text = redis_cmd(port, "INFO", section)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


# --------------------------------------------------------------------------
# redis-server

class Redis:
    """One redis-server on 127.0.0.1:port with its data in TMP/NAME.

    Durable enough that a registration survives a stop: the append-only file
    with appendfsync always (each write is on disk before Redis answers), no
    RDB snapshots. stop() is SIGTERM (Redis closes its connections and
    exits), start() again uses the same port and folder, so the data comes
    back from the append-only file; kill() is SIGKILL (a crash)."""

    def __init__(self, test, name="redis", replica_of=None, port=None):
        self.test = test
        self.name = name
        self.port = port or harness.free_port()
        self.replica_of = replica_of
        self.dir = os.path.join(test.tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.start()

    def argv(self):
        a = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no", "--daemonize", "no",
             "--loglevel", "verbose"]
        if self.replica_of is not None:
            a += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return a

    def start(self, timeout=None):
        self.proc = self.test.spawn(self.name, self.argv())
        # Redis's own exit code is not what the tests check.
        self.proc.expect_exit = None
        wait_until(self.ping, timeout or 20 * SLOW, "%s answering PING on port %d; log:\n%s"
                   % (self.name, self.port, self.proc.log_tail(10)))
        return self

    def ping(self):
        if self.proc is not None and not self.proc.alive():
            raise AssertionError("%s exited:\n%s" % (self.name, self.proc.log_tail()))
        try:
            return redis_cmd(self.port, "PING", timeout=2 * SLOW) == "PONG"
        except (OSError, ConnectionError, RespError):
            return False

    def cmd(self, *args):
        return redis_cmd(self.port, *args)

    def stop(self):
        return self.proc.stop()

    def kill(self):
        self.proc.sigkill()

    def url(self, db=0):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def wait_replica_online(self, timeout=None):
        """This primary has a replica in sync (state=online)."""
        def ok():
            inf = info(self.port, "replication")
            return any(k.startswith("slave") and "state=online" in v for k, v in inf.items())
        wait_until(ok, timeout or 20 * SLOW, "a replica of %s in sync" % self.name)


# --------------------------------------------------------------------------
# redis-sentinel

class Sentinels:
    """count sentinels watching primary (master name MASTER_NAME) with
    quorum, down-after-milliseconds and failover-timeout as given. Each has
    its own writable folder (Sentinel rewrites its config file)."""

    def __init__(self, test, primary, count=3, quorum=2, down_after_ms=1000,
                 failover_timeout_ms=3000):
        self.test = test
        self.ports = []
        self.procs = []
        for i in range(count):
            port = harness.free_port()
            d = os.path.join(test.tmp, "sentinel%d" % (i + 1))
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n"
                        "dir %s\nloglevel verbose\n"
                        "sentinel monitor %s 127.0.0.1 %d %d\n"
                        "sentinel down-after-milliseconds %s %d\n"
                        "sentinel failover-timeout %s %d\n"
                        "sentinel parallel-syncs %s 1\n"
                        % (port, d, MASTER_NAME, primary.port, quorum, MASTER_NAME,
                           down_after_ms, MASTER_NAME, failover_timeout_ms, MASTER_NAME))
            p = test.spawn("sentinel%d" % (i + 1), [REDIS_SENTINEL, conf])
            p.expect_exit = None
            self.ports.append(port)
            self.procs.append(p)

    def master(self, i=0):
        """SENTINEL MASTER as a dict, from sentinel i."""
        return pairs(redis_cmd(self.ports[i], "SENTINEL", "MASTER", MASTER_NAME))

    def primary_port(self, i=0):
        """The primary's port as sentinel i sees it."""
        addr = redis_cmd(self.ports[i], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(addr[1]) if addr else None

    def wait_ready(self, replicas=1, timeout=None):
        """Every sentinel knows the others and the replicas (they find each
        other through the primary within a few seconds): before that, a
        failover could not reach its quorum."""
        n = len(self.ports)

        def ok():
            for i in range(n):
                if not self.procs[i].alive():
                    raise AssertionError("sentinel%d exited:\n%s" % (i + 1,
                                                                      self.procs[i].log_tail()))
                m = self.master(i)
                if int(m.get("num-other-sentinels", -1)) != n - 1 or \
                        int(m.get("num-slaves", -1)) < replicas:
                    return False
            return True
        wait_until(ok, timeout or 30 * SLOW, "%d sentinels knowing each other and %d replica(s)"
                   % (n, replicas), interval=0.25)

    def wait_promoted(self, port, timeout=None):
        """Every sentinel names port as the primary."""
        wait_until(lambda: all(self.primary_port(i) == port for i in range(len(self.ports))),
                   timeout or 30 * SLOW, "the sentinels promoting 127.0.0.1:%d" % port,
                   interval=0.2)

    def url(self, db=0):
        return "sentinel://%s/%s/%d" % (",".join("127.0.0.1:%d" % p for p in self.ports),
                                         MASTER_NAME, db)


# --------------------------------------------------------------------------
# HAProxy

class HAProxy:
    """HAProxy in the foreground running docs/haproxy-cluster.cfg as it is,
    its presetenv defaults overridden through the environment: the client
    side on FRONT (app ports lo..hi and a web port), three nodes, its source
    BALANCER, health checks every 500 ms taking a node out after one failed
    check and back after one good one. Its log (stderr) says "Server
    nodes_apps/n2 is DOWN" / "is UP"."""

    def __init__(self, test, node_addrs, app_lo, app_hi, web_port, inter_ms=500):
        if len(node_addrs) != 3:
            raise ValueError("docs/haproxy-cluster.cfg has three nodes")
        self.test = test
        self.app_lo, self.app_hi = app_lo, app_hi
        self.web_port = free_ports_on([FRONT])
        self.env = {"FRONT_ADDR": FRONT, "APP_PORTS": "%d-%d" % (app_lo, app_hi),
                    "WEB_PORT": str(web_port), "FRONT_WEB_PORT": str(self.web_port),
                    "NODE1": node_addrs[0], "NODE2": node_addrs[1], "NODE3": node_addrs[2],
                    "BALANCER_SOURCE": BALANCER, "CHECK_INTER": str(inter_ms),
                    "CHECK_FALL": "1", "CHECK_RISE": "1", "MAXCONN": "2000"}
        check = subprocess.run([HAPROXY, "-c", "-f", HAPROXY_CFG], capture_output=True,
                               timeout=30, env=dict(os.environ, **self.env))
        test.assertEqual(check.returncode, 0, (check.stdout + check.stderr).decode())
        self.proc = test.spawn("haproxy", [HAPROXY, "-db", "-f", HAPROXY_CFG], env=self.env)
        self.proc.expect_exit = None  # its exit code after SIGTERM is not ours to judge
        for port in (app_lo, app_hi, self.web_port):
            wait_until(lambda p=port: listening(FRONT, p) or self._dead(), 10 * SLOW,
                       "HAProxy listening on %s:%d" % (FRONT, port))

    def _dead(self):
        if not self.proc.alive():
            raise AssertionError("haproxy exited:\n" + self.proc.log_tail())
        return False

    def wait_state(self, server, state, start=0, timeout=None):
        """HAProxy's log says nodes_apps/SERVER is UP or DOWN (after character start)."""
        return self.proc.wait_log(r"Server nodes_apps/%s is %s" % (server, state),
                                  timeout or 10 * SLOW, start)

    def mark(self):
        return len(self.proc.output())


# --------------------------------------------------------------------------
# The nodes and the private

def make_cert(tmp):
    """One certificate and key for every node of the cluster (a private
    pins the first node it meets and expects the same from the others)."""
    key = os.path.join(tmp, "cluster.key")
    crt = os.path.join(tmp, "cluster.crt")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=natproxy-cluster"], check=True,
                   capture_output=True, timeout=30)
    os.chmod(key, 0o600)
    return crt, key


class Node:
    """One proxy_public of the cluster: NAME on ADDR, the cluster's tunnel
    and web port numbers, its own state folder; start() again after kill()
    or stop() runs it with the same arguments."""

    def __init__(self, test, name, addr, tunnel_port, web_port, store_url, cert, key,
                 extra=()):
        self.test = test
        self.name = name
        self.addr = addr
        self.tunnel_port = tunnel_port
        self.web_port = web_port
        self.state_dir = os.path.join(test.tmp, "state-" + name)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.argv = [test.bin("proxy_public"), str(tunnel_port), str(web_port),
                     "--bind", addr, "--state-dir", self.state_dir, "--log-level", "debug",
                     "--token", test.token, "--cert", cert, "--key", key,
                     "--cluster", store_url, "--node-name", name,
                     "--advertise", "%s:%d" % (addr, tunnel_port),
                     "--accept-proxy-from", BALANCER + "/32"] + list(extra) + harness.EXTRA_ARGS
        self.proc = None

    @property
    def advertise(self):
        return "%s:%d" % (self.addr, self.tunnel_port)

    def start(self, wait=True):
        self.proc = self.test.spawn("node-" + self.name, self.argv)
        if wait:
            self.wait_api()
        return self

    def wait_api(self, timeout=None):
        def up():
            if not self.proc.alive():
                raise AssertionError("node %s exited with %s during start; log:\n%s" % (
                    self.name, self.proc.popen.returncode, self.proc.log_tail()))
            return self.api("GET", "/list")[0] == 200
        wait_until(up, timeout or 20 * SLOW, "the web API of node %s" % self.name)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def kill(self):
        """kill -9: no goodbye to Redis, the tunnels or the clients."""
        self.proc.sigkill()

    def stop(self):
        return self.proc.stop()

    def mark(self):
        """Where its log is now (for wait_log(..., start=mark))."""
        return len(self.proc.output())

    def wait_log(self, pattern, timeout=None, start=0):
        return self.proc.wait_log(pattern, timeout or 10 * SLOW, start)

    def api(self, method, path, body=None, token="default", source=None, timeout=None):
        """(status, parsed JSON or text) from this node's web port."""
        if token == "default":
            token = self.test.token
        c = http.client.HTTPConnection(self.addr, self.web_port, timeout=timeout or 10 * SLOW,
                                       source_address=(source, 0) if source else None)
        try:
            headers = {}
            if token is not None:
                headers["Authorization"] = "Bearer " + token
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            st, _, parsed = harness.http_exchange(c, method, path, data, headers)
            return st, parsed
        finally:
            c.close()

    def list(self):
        st, body = self.api("GET", "/list")
        if st != 200:
            raise AssertionError("GET /list on %s: %s %r" % (self.name, st, body))
        return body

    def cluster(self):
        """/list's "cluster" member (None when the node has none)."""
        return self.list().get("cluster")

    def node_names(self):
        """The names in /list's cluster.nodes."""
        c = self.cluster() or {}
        return sorted(n.get("name") for n in c.get("nodes", []))

    def connections(self):
        st, body = self.api("GET", "/connections")
        if st != 200:
            raise AssertionError("GET /connections on %s: %s %r" % (self.name, st, body))
        return body["connections"]

    def metrics(self):
        st, text = self.api("GET", "/metrics")
        if st != 200:
            raise AssertionError("GET /metrics on %s: %s" % (self.name, st))
        return text

    def metric(self, name):
        m = re.search(r"(?m)^%s (\d+(?:\.\d+)?)$" % re.escape(name), self.metrics())
        return float(m.group(1)) if m else None


def private_argv(test, node, name="home", extra=()):
    """proxy_private dialling node (only that one: it learns the others)."""
    return [test.bin("proxy_private"), node.addr, str(node.tunnel_port), "--name", name,
            "--log-level", "debug", "--known-hosts", os.path.join(test.tmp, "known_hosts"),
            "--token", test.token] + list(extra) + harness.EXTRA_ARGS


# --------------------------------------------------------------------------
# Traffic

def echo_check(addr, port, size, source=None, timeout=None, seed=None):
    """One connection to addr:port (an echo app behind it): size random
    bytes out, the same back (sha256 compared). Raises AssertionError or
    OSError on any difference or failure."""
    data = random.Random(seed).randbytes(size) if seed is not None else os.urandom(size)
    with connect(addr, port, source=source, timeout=timeout) as s:
        n, sha = harness.echo_stream(s, data, timeout or 20 * SLOW)
    if n != size or sha != harness.sha256(data):
        raise AssertionError("echo through %s:%d: %d of %d bytes came back%s" % (
            addr, port, n, size, "" if n != size else ", other bytes"))


class Traffic:
    """Connections to addr:port one after another on a background thread
    (each an echo_check of size bytes) until stop(): results holds (start
    time, end time, None or the error) of each."""

    def __init__(self, addr, port, size=8192, pause=0.02):
        self.addr, self.port, self.size, self.pause = addr, port, size, pause
        self.results = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            err = None
            try:
                echo_check(self.addr, self.port, self.size, timeout=10 * SLOW)
            except (OSError, AssertionError) as e:
                err = repr(e)
            self.results.append((t0, time.monotonic(), err))
            self._stop.wait(self.pause)

    def stop(self):
        self._stop.set()
        self.thread.join(30 * SLOW)
        return self.results

    def failures_started_after(self, t):
        return [r for r in self.results if r[0] >= t and r[2] is not None]

    def ok_count(self):
        return sum(1 for r in self.results if r[2] is None)
