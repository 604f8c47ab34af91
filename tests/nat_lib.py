"""Shared by the Python NAT tests (tests/nat_resume.py, tests/nat_udp.py):
namespaces from tests/netns_lib.sh, programs started in them with their logs
in the test's output folder, and cleanup on every exit path."""
import ctypes
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log_of(p):
    with open(p.log_path, errors="replace") as f:
        return f.read()


class Nat:
    """One test's namespaces (pub, rtr, home: ID + name) and programs."""

    def __init__(self, prefix, name):
        self.name = name
        self.id = "%s%d" % (prefix, os.getpid())
        self.ns = {"pub": self.id + "pub", "rtr": self.id + "rtr", "home": self.id + "home"}
        self.out = os.environ.get("NAT_OUT") or os.path.join(
            REPO, "tests", "out", os.environ.get("TEST_RUN", "%s-%d" % (name, int(time.time()))),
            name)
        self.procs = []
        os.makedirs(self.out, exist_ok=True)

    def step(self, msg):
        print("%s: %s" % (self.name, msg), flush=True)

    def fail(self, msg):
        print("FAIL: %s" % msg, flush=True)
        for name in sorted(os.listdir(self.out)) if os.path.isdir(self.out) else []:
            path = os.path.join(self.out, name)
            print("--- %s (tail)" % path)
            with open(path, errors="replace") as f:
                lines = [x for x in f if "ev=conn_closed" not in x and "web_front" not in x]
            sys.stdout.write("".join(lines[-25:]))
        sys.exit(1)

    def sh(self, script, check=True):
        """Run sh with tests/netns_lib.sh loaded and the namespace names set."""
        env = dict(os.environ, NS_PUB=self.ns["pub"], NS_RTR=self.ns["rtr"],
                   NS_HOME=self.ns["home"], TMP="/nonexistent", OUT=self.out, PIDS="")
        r = subprocess.run(["sh", "-c", "fail() { echo \"$*\" >&2; exit 1; }; "
                            ". tests/netns_lib.sh; " + script], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            self.fail("%s: %s %s" % (script, r.stdout, r.stderr))
        return r.stdout

    def run_in(self, ns, argv, check=True, timeout=60):
        r = subprocess.run(["ip", "netns", "exec", self.ns[ns]] + argv, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            self.fail("%s in %s: %s %s" % (" ".join(argv), ns, r.stdout, r.stderr))
        return r.stdout

    def spawn(self, ns, name, argv, env=None):
        log = open(os.path.join(self.out, name + ".log"), "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[ns]] + argv, stdout=log,
                             stderr=log, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, **env) if env else None)
        p.log_path = log.name
        self.procs.append(p)
        return p

    def wait_log(self, p, pattern, timeout, start=0, what=None):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(log_of(p)[start:])
            if m:
                return m
            if p.poll() is not None:
                self.fail("%s exited while waiting for %s" % (p.log_path, what or pattern))
            time.sleep(0.1)
        self.fail("no %r in %s within %ss" % (what or pattern, p.log_path, timeout))

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for n in self.ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    def enter(self, ns):
        """This process's sockets from now on live in namespace ns."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/var/run/netns/" + self.ns[ns], os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            self.fail("setns: errno %d" % ctypes.get_errno())
        os.close(fd)
