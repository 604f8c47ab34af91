"""Test harness: runs the real proxy_public / proxy_private binaries.

Everything a test starts is registered here and is stopped when the test ends,
whether it passed, failed or timed out: SIGTERM first (so that the process can
exit cleanly and LeakSanitizer can run), then SIGKILL if it does not exit.

Environment:
  TEST_MODE         release (default) | asan | tsan
  BIN_DIR           directory holding the binaries (default: the repo top for
                    release, build/asan or build/tsan for the sanitizer builds)
  PROXY_EXTRA_ARGS  extra arguments given to BOTH programs on every start
                    (e.g. "--insecure-plaintext" once TLS is the default)
  TEST_RUN          name of this run's folder under tests/out/ (default: MODE-time)
  TEST_TIMEOUT      seconds one test may take (default scales with the mode)
"""
import atexit
import ctypes
import hashlib
import http.client
import errno
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from helpers import apps  # noqa: E402  (after the path change)

MODE = os.environ.get("TEST_MODE", "release")
if MODE not in ("release", "asan", "tsan"):
    raise SystemExit("TEST_MODE must be release, asan or tsan, not %r" % MODE)
BIN_DIR = os.environ.get("BIN_DIR") or (
    REPO if MODE == "release" else os.path.join(REPO, "build", MODE))

# Extra arguments for both programs, in one place.  TLS is the default; set
# PROXY_EXTRA_ARGS=--insecure-plaintext to run the suite without it.
COMMON_ARGS = []
EXTRA_ARGS = COMMON_ARGS + shlex.split(os.environ.get("PROXY_EXTRA_ARGS", ""))
# Whether the tunnel speaks TLS (the default) or plaintext frames.
TLS = "--insecure-plaintext" not in EXTRA_ARGS

# How much slower the sanitizer builds are; every bounded wait is scaled by it.
SLOW = {"release": 1, "asan": 3, "tsan": 6}[MODE]
# Bulk sizes: full size in release, smaller under the sanitizers.
BULK = {"release": 64, "asan": 16, "tsan": 8}[MODE] << 20
TEST_TIMEOUT = int(os.environ.get("TEST_TIMEOUT", str(120 * SLOW)))

RUN_NAME = os.environ.get("TEST_RUN") or "%s-%s" % (MODE, time.strftime("%Y%m%d-%H%M%S"))
OUT_ROOT = os.path.join(HERE, "out", RUN_NAME)

SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:",
                      "WARNING: ThreadSanitizer", "LeakSanitizer")

SAN_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:detect_leaks=1:abort_on_error=0:"
                    "detect_stack_use_after_return=1:strict_string_checks=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "LSAN_OPTIONS": "report_objects=1",
    "TSAN_OPTIONS": "second_deadlock_stack=1:halt_on_error=0:history_size=4",
}

# Operation codes, from op_enum.h.
OP_HELLO, OP_WELCOME, OP_ERROR, OP_PING, OP_BUILD, OP_CONNECTED, OP_DATA, \
    OP_ACK, OP_SHUTDOWN, OP_CLOSE, OP_RESUME, OP_UDP_DATA, OP_UDP_CLOSE, OP_FTP_OPEN, \
    OP_FTP_OPENED, OP_FTP_CONNECT, OP_FTP_TLS = range(1, 18)
OP_APPS, OP_APPS_RESULT, OP_NODES = 18, 19, 20


def _proto_version():
    with open(os.path.join(REPO, "packet.h")) as f:
        return int(re.search(r"#define PKT_PROTO_VERSION (\d+)", f.read()).group(1))


# The highest protocol version the programs speak (packet.h).
PROTO_VERSION = _proto_version()


def read_version():
    try:
        with open(os.path.join(REPO, "Makefile")) as f:
            m = re.search(r"^VERSION\s*:?=\s*(\S+)", f.read(), re.M)
            return m.group(1) if m else None
    except OSError:
        return None


# --------------------------------------------------------------------------
# Process bookkeeping: everything started is killed on exit, whatever happens.

_ALL_PROCS = []
_LIBC = None
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    pass


def _child_setup():
    # Die with the test process even if it is SIGKILLed (PR_SET_PDEATHSIG=1).
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)


def kill_all():
    for p in list(_ALL_PROCS):
        if p.popen.poll() is None:
            try:
                p.popen.kill()
                p.popen.wait(5)
            except Exception:
                pass


atexit.register(kill_all)


def _on_term(signum, frame):
    kill_all()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _on_term)


class Proc:
    """One started program; stdout and stderr go to a log file."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.killed = False      # SIGKILLed on purpose: no exit-code check
        self.expect_exit = 0     # exit code expected after SIGTERM (None: any)
        self.returncode = None
        self.stopped = False
        full_env = dict(os.environ)
        full_env.update(SAN_ENV)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        with open(log_path, "ab") as log:
            log.write(("# %s\n" % " ".join(shlex.quote(a) for a in argv)).encode())
            log.flush()
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log, env=full_env,
                                          preexec_fn=_child_setup, cwd=REPO)
        self.pid = self.popen.pid
        _ALL_PROCS.append(self)

    def alive(self):
        return self.popen.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log().splitlines()[-n:])

    def output(self):
        """The program's own output: the log without the harness's "# " lines."""
        return "".join(line for line in self.log().splitlines(True)
                       if not line.startswith("# "))

    def wait_log(self, pattern, timeout, start=0):
        """Wait until the program's output (from character `start`) matches regex
        pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.output()[start:])
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError("%s: no log line matching %r within %ss; log tail:\n%s"
                                     % (self.name, pattern, timeout, self.log_tail()))
            time.sleep(0.05)

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for %s" % self.name)

    def sigkill(self):
        self.killed = True
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)
        self.returncode = self.popen.returncode
        self.stopped = True

    def stop(self, timeout=None):
        """SIGTERM, wait (bounded), SIGKILL if still there. Returns the exit code
        (negative: killed by that signal)."""
        if timeout is None:
            timeout = 10 * SLOW
        if self.stopped:
            return self.returncode
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                with open(self.log_path, "ab") as log:
                    log.write(b"# harness: no exit within %ds of SIGTERM, SIGKILLed\n"
                              % timeout)
                self.returncode = "hung after SIGTERM"
                self.stopped = True
                return self.returncode
        self.returncode = self.popen.returncode
        self.stopped = True
        return self.returncode

    def sanitizer_report(self):
        text = self.log()
        for pat in SANITIZER_PATTERNS:
            i = text.find(pat)
            if i >= 0:
                return text[max(0, i - 200):i + 3000]
        return None


# --------------------------------------------------------------------------
# Small network helpers.

def free_port():
    """A port that was free on 127.0.0.1 a moment ago, below the ephemeral
    range: a port of that range, free a moment ago, may be taken meanwhile by
    the source port of any connection on this busy machine (the other lane's
    tests open thousands)."""
    return free_port_range(1)[0]


def echo_stream(sock, data, timeout):
    """Send data on sock in 256 KiB writes and half-close, while reading what
    comes back up to its end: returns (bytes read, their sha256 in hex).
    Raises when either direction fails or takes longer than timeout."""
    out, errors = {}, []

    def send():
        view = memoryview(data)
        for off in range(0, len(data), 1 << 18):
            sock.sendall(view[off:off + (1 << 18)])
        sock.shutdown(socket.SHUT_WR)

    def receive():
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        out["n"], out["sha"] = n, h.hexdigest()

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: B902 - reported to the test
            errors.append("%s: %r" % (fn.__name__, e))

    threads = [threading.Thread(target=wrap, args=(f,), daemon=True) for f in (send, receive)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        errors.append("the stream did not finish within %ss" % timeout)
    if errors:
        raise AssertionError("; ".join(errors))
    return out["n"], out["sha"]


def have_ipv6_loopback():
    """Whether ::1 can be bound here (tests over IPv6 skip without it)."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def udp_ask(sock, data, addr, timeout, refused_ok=False):
    """Send data to addr from sock (with a short timeout of its own) until a
    datagram comes back, within timeout seconds; returns it, or None. A UDP
    app that is still starting drops the first ones; refused_ok: a port
    unreachable (the port was closed a moment ago) is tried again too."""
    retry = (socket.timeout, ConnectionRefusedError) if refused_ok else socket.timeout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(data, addr)
        try:
            return sock.recvfrom(70000)[0]
        except retry:
            pass
    return None


# Ports free_port_range() gave this process: never given twice (a test may
# take a range it binds only later, then a port that must not fall in it).
_HANDED_OUT = set()


def free_port_range(n):
    """n consecutive free ports, below the ephemeral range (32768 and up, where
    every test's bind-to-port-0 ports and the busy machine's connections are),
    so that nobody else's free port lands in the range meanwhile; and below
    the default --ftp-ports (30000-30999), which a fixed range must not
    overlap. Returns (first, last)."""
    rng = random.Random()
    if len(_HANDED_OUT) > 5000:
        _HANDED_OUT.clear()
    for _ in range(200):
        lo = rng.randrange(20000, 29999 - n)
        if any(p in _HANDED_OUT for p in range(lo, lo + n)):
            continue  # handed out before, maybe not bound yet (an --ftp-ports range)
        socks = []
        try:
            for p in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                s.listen(1)
            _HANDED_OUT.update(range(lo, lo + n))
            return lo, lo + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no %d consecutive free ports" % n)


def free_port_any():
    """A port free on every address of both families (TCP and UDP), for a
    program that listens on the wildcard (no --bind: one dual-stack [::]
    socket). Such a bind fails on a port that any connection of the machine
    uses locally on any address, so it is taken below the ephemeral range and
    below free_port_range's ports (10000-19999), and checked with a
    dual-stack listener."""
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(10000, 19999)
        socks = []
        try:
            for typ in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                try:
                    s = socket.socket(socket.AF_INET6, typ)
                    socks.append(s)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("::", p))
                except OSError as e:
                    if e.errno == errno.EAFNOSUPPORT:  # no IPv6: IPv4 wildcard
                        s = socket.socket(socket.AF_INET, typ)
                        socks.append(s)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind(("0.0.0.0", p))
                    else:
                        raise
                if typ == socket.SOCK_STREAM:
                    s.listen(1)
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no port free on every address")


def connect(port, timeout=None, source=None):
    """A TCP connection to 127.0.0.1:port, from the loopback address source
    when given (127.0.0.2 and up: another client address)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout or 10 * SLOW,
                                    source_address=(source, 0) if source else None)


def recv_all(sock, limit=None):
    """Read until end of stream; returns the bytes."""
    chunks = []
    n = 0
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            break
        chunks.append(data)
        n += len(data)
        if limit is not None and n > limit:
            raise AssertionError("more than %d bytes received" % limit)
    return b"".join(chunks)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise AssertionError("end of stream after %d of %d bytes" % (len(buf), n))
        buf += data
    return bytes(buf)


def closed_by_peer(sock, timeout):
    """True if the peer closes (EOF or reset) within timeout, discarding data.
    False if the socket is still open after timeout."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        if not data:
            return True
    return False


def tunnel_socket(port, timeout):
    """A connection to the tunnel port as a private would open it: TLS 1.3
    (certificate not checked: the tests look at the frames behind it) unless
    the suite runs with --insecure-plaintext."""
    return wrap_tunnel(socket.create_connection(("127.0.0.1", port), timeout=timeout))


def wrap_tunnel(s):
    """TLS on a connected socket to the tunnel port, as tunnel_socket() does
    (nothing when the suite runs without TLS)."""
    if not TLS:
        return s
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        return ctx.wrap_socket(s)
    except BaseException:
        s.close()
        raise


def frame(header, payload=b""):
    """One tunnel frame: 4-byte big-endian header length, JSON header, payload."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(h)) + h + payload


def read_frame(sock):
    """Read one frame; returns (header dict, payload) or None at end of stream."""
    try:
        hdr = recv_exact(sock, 4)
    except (AssertionError, ConnectionResetError, ssl.SSLError):
        return None
    (n,) = struct.unpack(">I", hdr)
    if n < 1 or n > 65536:
        raise AssertionError("peer sent frame header length %d" % n)
    h = json.loads(recv_exact(sock, n))
    payload = b""
    if h.get("op") in (OP_DATA, OP_UDP_DATA) and h.get("len"):
        payload = recv_exact(sock, h["len"])
    return h, payload


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def http_exchange(c, method, path, data, headers):
    """One request on the http.client connection c: (status, headers with
    lower-case names, body parsed as JSON or else the text)."""
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed


def wait_until(pred, timeout, what, interval=0.1):
    """Poll pred() until it returns a true value, bounded by timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError) as e:
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s%s" % (
                timeout, what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout("test took longer than %ds (TEST_TIMEOUT)" % TEST_TIMEOUT)


# --------------------------------------------------------------------------

class ProxyTest(unittest.TestCase):
    """Base class: per-test temp dir, output dir, processes, cleanup, checks."""

    needs_binaries = True

    def setUp(self):
        for b in ("proxy_public", "proxy_private") if self.needs_binaries else ():
            path = os.path.join(BIN_DIR, b)
            if not os.access(path, os.X_OK):
                self.fail("%s is missing (build it first: make, or make %s)" % (
                    path, "build/%s/%s" % (MODE, b) if MODE != "release" else b))
        name = self.id().split(".", 1)[-1]
        self.out_dir = os.path.join(OUT_ROOT, name)
        shutil.rmtree(self.out_dir, ignore_errors=True)
        os.makedirs(self.out_dir)
        self.tmp = tempfile.mkdtemp(prefix="nattest-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.procs = []
        self.servers = []
        self.token = secrets.token_hex(16)
        self._counts = {}
        self.addCleanup(self._cleanup)
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(TEST_TIMEOUT)
        self.addCleanup(signal.alarm, 0)

    # ---- cleanup and the checks that every test gets
    def _cleanup(self):
        signal.alarm(0)
        problems = []
        for p in reversed(self.procs):
            rc = p.stop()
            if p.killed:
                continue
            if p.expect_exit is not None and rc != p.expect_exit:
                problems.append("%s exited with %r after SIGTERM, expected %r; log %s:\n%s"
                                % (p.name, rc, p.expect_exit, p.log_path, p.log_tail()))
        for p in self.procs:
            rep = p.sanitizer_report()
            if rep:
                problems.append("%s: sanitizer report in %s:\n%s" % (p.name, p.log_path, rep))
        for s in self.servers:
            s.close()
        if problems:
            raise AssertionError("\n\n".join(problems))

    # ---- starting things
    def _log_path(self, name):
        k = self._counts.get(name, 0) + 1
        self._counts[name] = k
        return os.path.join(self.out_dir, "%s%s.log" % (name, "" if k == 1 else ".%d" % k))

    def spawn(self, name, argv, env=None):
        p = Proc(name, argv, self._log_path(name), env)
        self.procs.append(p)
        return p

    def bin(self, name):
        return os.path.join(BIN_DIR, name)

    def start_public(self, tunnel_port=None, web_port=None, token="default",
                     state_dir=None, extra=(), wait=True):
        self.tunnel_port = tunnel_port or getattr(self, "tunnel_port", None) or free_port()
        self.web_port = web_port or getattr(self, "web_port", None) or free_port()
        if state_dir is None:
            state_dir = os.path.join(self.tmp, "state")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.state_dir = state_dir
        argv = [self.bin("proxy_public"), str(self.tunnel_port), str(self.web_port),
                "--bind", "127.0.0.1", "--state-dir", state_dir, "--log-level", "debug"]
        if token == "default":
            token = self.token
        if token is not None:
            argv += ["--token", token]
        argv += list(extra) + EXTRA_ARGS
        env = {"NAT_TOKEN": None} if token is None else None
        p = self.spawn("public", argv, env)
        self.public = p
        if wait:
            self.wait_api_up(p)
        return p

    def start_private(self, name="home", token="default", register=(), extra=(),
                      port=None):
        if token == "default":
            token = self.token
        # TLS is on by default: each test keeps its own trust-on-first-use
        # file, so a port reused by an earlier test's server is never "changed".
        argv = [self.bin("proxy_private"), "127.0.0.1", str(port or self.tunnel_port),
                "--name", name, "--log-level", "debug",
                "--known-hosts", os.path.join(self.tmp, "known_hosts")]
        if token is not None:
            argv += ["--token", token]
        for r in register:
            argv += ["--register", r]
        argv += list(extra) + EXTRA_ARGS
        return self.spawn("private-" + name, argv)

    def server(self, cls, *a, **kw):
        s = cls(*a, **kw)
        self.servers.append(s)
        return s

    # ---- HTTP API
    def api(self, method, path, body=None, token="default", raw_body=None,
            auth_header=None):
        """Returns (status, parsed JSON or raw text)."""
        if token == "default":
            token = self.token
        c = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10 * SLOW)
        try:
            headers = {}
            if auth_header is not None:
                headers["Authorization"] = auth_header
            elif token is not None:
                headers["Authorization"] = "Bearer " + token
            data = raw_body
            if body is not None:
                data = json.dumps(body).encode()
            if data is not None:
                headers["Content-Type"] = "application/json"
            status, _, parsed = http_exchange(c, method, path, data, headers)
            return status, parsed
        finally:
            c.close()

    def list(self):
        st, body = self.api("GET", "/list")
        self.assertEqual(st, 200, body)
        return body

    def register(self, name, public_port, target_port, target_host="127.0.0.1",
                 private="home", expect=201):
        body = {"name": name, "public_port": public_port, "target_host": target_host,
                "target_port": target_port}
        if private is not None:
            body["private"] = private
        st, resp = self.api("POST", "/register", body)
        self.assertEqual(st, expect, "register %r -> %s %r" % (body, st, resp))
        return resp

    def wait_api_up(self, proc, timeout=None):
        timeout = timeout or 20 * SLOW

        def up():
            if not proc.alive():
                raise AssertionError("%s exited with %s during start; log:\n%s" % (
                    proc.name, proc.popen.returncode, proc.log_tail()))
            st, _ = self.api("GET", "/list")
            return st == 200
        wait_until(up, timeout, "the web API of %s" % proc.name)

    def find(self, items, name):
        for it in items:
            if it.get("name") == name:
                return it
        return None

    def wait_online(self, private="home", apps=(), timeout=None):
        """Bounded poll of /list until the private and the apps are online."""
        timeout = timeout or 20 * SLOW
        state = {}

        def ok():
            pub = getattr(self, "public", None)
            if pub is not None and not pub.alive():
                raise AssertionError("public exited:\n" + pub.log_tail())
            mine = [p for p in self.procs if p.name == "private-" + private]
            if mine and not mine[-1].alive():
                raise AssertionError("%s exited with %s:\n%s" % (
                    mine[-1].name, mine[-1].popen.returncode, mine[-1].log_tail()))
            body = self.list()
            state["last"] = body
            pv = self.find(body.get("privates", []), private)
            if not pv or pv.get("online") is not True:
                return False
            for a in apps:
                app = self.find(body.get("apps", []), a)
                if not app or app.get("online") is not True:
                    return False
            return True
        try:
            wait_until(ok, timeout, "private %r and apps %r online" % (private, list(apps)))
        except AssertionError as e:
            raise AssertionError("%s; last /list: %s" % (e, json.dumps(state.get("last"))))
        return state["last"]

    def wait_offline(self, private="home", timeout=None):
        timeout = timeout or 30 * SLOW

        def off():
            pv = self.find(self.list().get("privates", []), private)
            return pv is not None and pv.get("online") is False
        wait_until(off, timeout, "private %r offline in /list" % private)

    # ---- common flows
    def echo_roundtrip(self, port, data=None):
        data = data or secrets.token_bytes(1000)
        with connect(port) as s:
            s.sendall(data)
            got = recv_exact(s, len(data))
        self.assertEqual(got, data, "echo through port %d returned other bytes" % port)

    def setup_echo(self, app="echo", register_via="cli", public_extra=()):
        """public + private + echo app; returns the app's public port."""
        echo = self.server(apps.EchoServer)
        self.start_public(extra=public_extra)
        app_port = free_port()
        spec = "%s:%d:127.0.0.1:%d" % (app, app_port, echo.port)
        if register_via == "cli":
            self.start_private(register=[spec])
            self.wait_online(apps=[app])
        else:
            self.start_private()
            self.wait_online()
            self.register(app, app_port, echo.port)
            self.wait_online(apps=[app])
        return app_port


def main():
    unittest.main(verbosity=2)
