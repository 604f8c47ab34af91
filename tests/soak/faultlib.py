"""Helpers for the fault and load tests (tests/test_faults.py, tests/soak.sh).
Python standard library only.

- source_block / source_digest: the byte stream of echo_server.py's source mode;
- ProcStats / proc_stats: threads, descriptors and VmRSS of a process from /proc;
- sockets_in_state: sockets of a process (by inode) in a TCP state (CLOSE_WAIT...);
- hold / churn: many connections driven by one epoll loop (no thread each);
- raise_limits / restore_limits: kernel.pid_max and RLIMIT_NOFILE for big runs.
"""
import errno
import hashlib
import os
import random
import select
import socket
import struct
import time

BLOCK = 1 << 20

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def source_block(seed):
    """The 1 MiB block that source mode repeats."""
    return random.Random(seed).randbytes(BLOCK)


def source_digest(n, seed):
    """sha256 of the first n bytes of the source stream for seed."""
    block = source_block(seed)
    h = hashlib.sha256()
    full, rest = divmod(n, BLOCK)
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return h.hexdigest()


# --------------------------------------------------------------------------
# /proc sampling

class ProcStats:
    __slots__ = ("threads", "fds", "rss_kib")

    def __init__(self, threads, fds, rss_kib):
        self.threads = threads
        self.fds = fds
        self.rss_kib = rss_kib

    def __repr__(self):
        return "threads=%d fds=%d rss=%.1fMiB" % (self.threads, self.fds, self.rss_kib / 1024)


def proc_stats(pid):
    threads = rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return ProcStats(threads, fds, rss)


def socket_inodes(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    for name in os.listdir(d):
        try:
            link = os.readlink(os.path.join(d, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def tcp_sockets():
    """[(local_port, remote_port, state name, inode)] for IPv4 and IPv6 TCP."""
    res = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    res.append((lport, rport, TCP_STATES.get(p[3], p[3]), p[9]))
        except OSError:
            pass
    return res


def sockets_in_state(state, pids=(), ports=()):
    """Sockets in TCP state `state` that belong to one of pids (by inode), or
    whose local or remote port is in ports. Returns a list of tuples."""
    inodes = set()
    for pid in pids:
        try:
            inodes |= socket_inodes(pid)
        except OSError:
            pass
    ports = set(ports)
    return [s for s in tcp_sockets() if s[2] == state and
            (s[3] in inodes or s[0] in ports or s[1] in ports)]


# --------------------------------------------------------------------------
# Limits

def _read_sysctl(name):
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return f.read().strip()


def _write_sysctl(name, value):
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(str(value))


def raise_limits(conns, say=print):
    """Make room for `conns` relayed connections: RLIMIT_NOFILE of this process
    (inherited by everything it starts) and kernel.pid_max. Returns what to
    restore_limits(). Prints what it changed."""
    import resource
    saved = {}
    need_fds = conns + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need_fds and os.geteuid() == 0:
        try:
            nr_open = int(_read_sysctl("fs.nr_open"))
            new_hard = min(nr_open, max(need_fds, 65536))
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            say("limits: RLIMIT_NOFILE raised from %d/%d to %d/%d (soft/hard)"
                % (soft, hard, new_hard, new_hard))
            saved["nofile"] = (soft, hard)
        except (OSError, ValueError) as e:
            say("limits: could not raise RLIMIT_NOFILE hard limit: %s" % e)
    soft2, hard2 = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft2 < hard2:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard2, hard2))
        if "nofile" not in saved:
            saved["nofile"] = (soft, hard)
            say("limits: RLIMIT_NOFILE soft limit raised from %d to %d" % (soft, hard2))
    # Every relayed connection is one thread on each proxy (each a pid).
    need_pids = 2 * conns + 8192
    try:
        pid_max = int(_read_sysctl("kernel.pid_max"))
        if pid_max < need_pids:
            if os.geteuid() == 0:
                _write_sysctl("kernel.pid_max", 4194304)
                saved["pid_max"] = pid_max
                say("limits: sysctl kernel.pid_max raised from %d to 4194304 (restored afterwards)"
                    % pid_max)
            else:
                say("limits: kernel.pid_max=%d is lower than the ~%d this run needs, not root"
                    % (pid_max, need_pids))
    except OSError as e:
        say("limits: cannot read/raise kernel.pid_max: %s" % e)
    return saved


def restore_limits(saved, say=print):
    import resource
    if "pid_max" in saved:
        try:
            _write_sysctl("kernel.pid_max", saved["pid_max"])
            say("limits: kernel.pid_max restored to %d" % saved["pid_max"])
        except OSError as e:
            say("limits: could not restore kernel.pid_max: %s" % e)
    if "nofile" in saved:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, saved["nofile"])
        except (OSError, ValueError):
            pass


def limits_summary():
    import resource
    out = []
    for n in ("kernel.pid_max", "kernel.threads-max", "vm.max_map_count", "net.core.somaxconn",
              "net.ipv4.ip_local_port_range"):
        try:
            out.append("%s=%s" % (n, " ".join(_read_sysctl(n).split())))
        except OSError:
            pass
    out.append("RLIMIT_NOFILE=%d/%d" % resource.getrlimit(resource.RLIMIT_NOFILE))
    return " ".join(out)


# --------------------------------------------------------------------------
# Many connections in one epoll loop

class Result:
    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.errors = {}       # reason -> count
        self.examples = []

    def fail(self, why, detail=""):
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1
        if len(self.examples) < 5:
            self.examples.append("%s %s" % (why, detail))

    def __repr__(self):
        return "ok=%d failed=%d errors=%r examples=%r" % (self.ok, self.failed, self.errors,
                                                         self.examples)


class _C:
    __slots__ = ("sock", "idx", "want", "got", "phase", "t0")


def _msg(idx, rnd):
    # 32 bytes unique to this connection and round: a mixed-up reply shows.
    return struct.pack(">QQ", idx, rnd) + hashlib.sha256(struct.pack(">QQ", idx, rnd)).digest()[:16]


class Hold:
    """Open n connections to port and keep them. open() connects and echo-checks
    each one (at most `inflight` connects at a time); check(round) sends a new
    message on every open connection and checks its echo; close() closes all.
    Every step is bounded by a deadline; failures are counted, not raised."""

    def __init__(self, port, n, inflight=200, host="127.0.0.1"):
        self.port = port
        self.n = n
        self.inflight = inflight
        self.host = host
        self.conns = {}        # fd -> _C
        self.ep = select.epoll()

    def _start(self, idx, res):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((self.host, self.port))
        except BlockingIOError:
            pass
        except OSError as e:
            s.close()
            res.fail("connect", repr(e))
            return
        self.busy += 1
        c = _C()
        c.sock, c.idx, c.got, c.phase = s, idx, b"", "connect"
        c.want = _msg(idx, 0)
        c.t0 = time.monotonic()
        self.conns[s.fileno()] = c
        self.ep.register(s.fileno(), select.EPOLLOUT)

    def _drop(self, fd):
        c = self.conns.pop(fd)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        c.sock.close()

    def _step(self, fd, ev, res):
        """Advance one connection; returns True when its round is finished."""
        c = self.conns[fd]
        if c.phase == "connect":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                res.fail("connect", os.strerror(err))
                self._drop(fd)
                return True
            c.phase = "send"
        if c.phase == "send":
            try:
                c.sock.send(c.want)     # 32 bytes: always fits an empty buffer
            except OSError as e:
                res.fail("send", repr(e))
                self._drop(fd)
                return True
            c.phase = "recv"
            self.ep.modify(fd, select.EPOLLIN)
            return False
        if c.phase == "recv":
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                return False
            except OSError as e:
                res.fail("recv", repr(e))
                self._drop(fd)
                return True
            if not data:
                res.fail("eof", "conn %d after %d bytes" % (c.idx, len(c.got)))
                self._drop(fd)
                return True
            c.got += data
            if len(c.got) >= len(c.want):
                if c.got != c.want:
                    res.fail("corrupt", "conn %d got %r" % (c.idx, c.got[:40]))
                    self._drop(fd)
                    return True
                res.ok += 1
                c.phase = "idle"
                self.ep.modify(fd, 0)
                return True
        return False

    def _loop(self, res, deadline, to_start=0):
        """Run until every started connection finished its round (self.busy
        counts those that have not), starting to_start new ones on the way."""
        nxt = 0
        while nxt < to_start or self.busy > 0:
            while nxt < to_start and self.busy < self.inflight:
                self._start(nxt, res)
                nxt += 1
            if time.monotonic() > deadline:
                for c in [c for c in self.conns.values() if c.phase != "idle"]:
                    res.fail("timeout-" + c.phase, "conn %d" % c.idx)
                    self._drop(c.sock.fileno())
                if nxt < to_start:
                    res.fail("timeout-not-started", "%d connections" % (to_start - nxt))
                    res.failed += to_start - nxt - 1
                self.busy = 0
                return
            for fd, ev in self.ep.poll(0.2):
                if fd in self.conns and self._step(fd, ev, res):
                    self.busy -= 1

    def open(self, timeout):
        res = Result()
        self.busy = 0
        self._loop(res, time.monotonic() + timeout, to_start=self.n)
        return res

    def check(self, rnd, timeout):
        """Send message round `rnd` on every open connection, check every echo."""
        res = Result()
        self.busy = 0
        for fd, c in list(self.conns.items()):
            c.want = _msg(c.idx, rnd)
            c.got = b""
            c.phase = "send"
            self.ep.modify(fd, select.EPOLLOUT)
            self.busy += 1
        self._loop(res, time.monotonic() + timeout)
        return res

    def wait_all_closed(self, timeout):
        """Wait until the peer has closed (end of stream or reset) every held
        connection; returns how many are still open after timeout."""
        for fd in self.conns:
            self.ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(0.2):
                c = self.conns.get(fd)
                if c is None:
                    continue
                try:
                    if c.sock.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._drop(fd)
        return len(self.conns)

    def count(self):
        return len(self.conns)

    def close(self):
        for fd in list(self.conns):
            self._drop(fd)
        self.ep.close()


def churn(port, n, parallel=32, timeout=300, rst_every=10, host="127.0.0.1"):
    """Open n short connections (at most `parallel` at a time), echo-check 32
    bytes on each and close it; every rst_every-th one closes with a reset
    (SO_LINGER 0) instead of a FIN. Returns a Result."""
    res = Result()
    ep = select.epoll()
    conns = {}
    started = 0
    deadline = time.monotonic() + timeout
    linger0 = struct.pack("ii", 1, 0)

    def finish(fd, ok_close=True):
        c = conns.pop(fd)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        if ok_close and rst_every and c.idx % rst_every == 0:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        c.sock.close()

    while started < n or conns:
        while started < n and len(conns) < parallel:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass
            except OSError as e:
                s.close()
                res.fail("connect", repr(e))
                if e.errno == errno.EADDRNOTAVAIL:
                    time.sleep(0.05)
                started += 1
                continue
            c = _C()
            c.sock, c.idx, c.got, c.phase = s, started, b"", "connect"
            c.want = _msg(started, 1)
            conns[s.fileno()] = c
            ep.register(s.fileno(), select.EPOLLOUT)
            started += 1
        if time.monotonic() > deadline:
            for fd in list(conns):
                res.fail("timeout-" + conns[fd].phase, "conn %d" % conns[fd].idx)
                finish(fd, False)
            res.failed += n - started
            break
        for fd, ev in ep.poll(0.2):
            c = conns.get(fd)
            if c is None:
                continue
            try:
                if c.phase == "connect":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        res.fail("connect", os.strerror(err))
                        finish(fd, False)
                        continue
                    c.sock.send(c.want)
                    c.phase = "recv"
                    ep.modify(fd, select.EPOLLIN)
                    continue
                data = c.sock.recv(4096)
                if not data:
                    res.fail("eof", "conn %d after %d bytes" % (c.idx, len(c.got)))
                    finish(fd, False)
                    continue
                c.got += data
                if len(c.got) >= len(c.want):
                    if c.got != c.want:
                        res.fail("corrupt", "conn %d" % c.idx)
                    else:
                        res.ok += 1
                    finish(fd)
            except BlockingIOError:
                pass
            except OSError as e:
                res.fail(c.phase, repr(e))
                finish(fd, False)
    ep.close()
    return res


def wait_for(pred, timeout, interval=0.25):
    """Poll pred() until true or timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
