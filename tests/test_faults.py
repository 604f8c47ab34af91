"""Load and fault tests against the real binaries: many concurrent connections,
churn, SIGKILL of either side during traffic, slow and stalled peers, state-dir
faults, and a valgrind session.

The normal suite runs short versions. `make soak` (tests/soak.sh) runs the same
tests with SOAK=1: 10,000 connections, 20,000 churned ones, 1 GiB to a client that
does not read, valgrind, and a mixed-traffic soak with periodic private kills.

Environment (besides the harness's):
  SOAK=1            soak sizes, and enables test_soak_mixed
  SOAK_SECONDS      length of test_soak_mixed (default 300)
  FAULT_CONNS, FAULT_CHURN, FAULT_STALL_MIB   override the sizes

Every check is on behaviour (echo intact, closed, back online, resources back
near the baseline) with bounded waits, never on timings. Figures (threads,
descriptors, VmRSS per connection) are printed as "figure: ..." lines and kept
in <out>/<test>/figures.json.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import harness
from harness import ProxyTest, MODE, SLOW, connect, free_port, recv_exact

sys.path.insert(0, os.path.join(harness.HERE, "soak"))
import faultlib  # noqa: E402

PY = sys.executable or "python3"
ECHO = os.path.join(harness.HERE, "soak", "echo_server.py")
SOAK = os.environ.get("SOAK") == "1"
IS_ROOT = os.geteuid() == 0


def _size(env, soak, per_mode):
    if os.environ.get(env):
        return int(os.environ[env])
    return soak if SOAK else per_mode[MODE]


CONNS = _size("FAULT_CONNS", 10000, {"release": 1000, "asan": 300, "tsan": 150})
CHURN = _size("FAULT_CHURN", 20000, {"release": 2000, "asan": 600, "tsan": 300})
STALL = _size("FAULT_STALL_MIB", 1024, {"release": 64, "asan": 32, "tsan": 16}) << 20
# Memory growth allowed on each proxy while a peer stalls (the design bounds it
# by one 1 MiB window per connection and direction, plus socket buffers).
STALL_RSS_GROWTH_KIB = 64 * 1024
# After the load is gone: what "back near the baseline" means.
SLACK_THREADS = 2
SLACK_FDS = 2
# glibc keeps freed thread stacks (stack cache, 40 MiB) and arena pages; a leak
# per connection over thousands of connections would exceed this.
SLACK_RSS_KIB = 48 * 1024


def say(msg):
    print(msg, flush=True)


class FaultTest(ProxyTest):
    def setUp(self):
        if MODE == "tsan" and not SOAK:
            # Load and resource checks at ThreadSanitizer's speed take ~8 min
            # and measure TSan, not us; races are what TSan is for, and the
            # rest of the suite (kills, restarts, 200 connections, bulk) runs
            # under it. `SOAK=1` runs this file under TSan too.
            self.skipTest("fault and load suite: release and ASan builds (SOAK=1 for TSan)")
        # Registered before the harness's cleanup so that it runs after every
        # process is stopped.
        self._saved_limits = {}
        self.addCleanup(self._restore)
        super().setUp()
        self.figures = {}

    def _restore(self):
        if self._saved_limits:
            faultlib.restore_limits(self._saved_limits, say)
            self._saved_limits = {}

    def tearDown(self):
        if self.figures:
            with open(os.path.join(self.out_dir, "figures.json"), "w") as f:
                json.dump(self.figures, f, indent=1)

    # ---- helpers
    def figure(self, key, value):
        self.figures[key] = value
        say("figure: %s = %s" % (key, value))

    def app_server(self, mode="echo"):
        p = self.spawn("app-" + mode, [PY, ECHO, "--mode", mode])
        m = p.wait_log(r"port=(\d+)", 20 * SLOW)
        return p, int(m.group(1))

    def setup_apps(self, modes=("echo",), via_api=False, grace=None):
        """public + private + one app per mode; returns {mode: (public port,
        target port, server proc)}. grace: --resume-grace for both sides."""
        extra = ["--resume-grace", str(grace)] if grace is not None else []
        self.start_public(extra=extra)
        apps_ = {}
        specs = []
        for mode in modes:
            proc, port = self.app_server(mode)
            pub = free_port()
            apps_[mode] = (pub, port, proc)
            specs.append("%s:%d:127.0.0.1:%d" % (mode, pub, port))
        if via_api:
            self.private = self.start_private(extra=extra)
            self.wait_online()
            for mode in modes:
                self.register(mode, apps_[mode][0], apps_[mode][1])
        else:
            self.private = self.start_private(register=specs, extra=extra)
        self.wait_online(apps=list(modes))
        self.private_argv = self.private.argv
        return apps_

    def stats(self):
        return faultlib.proc_stats(self.public.pid), faultlib.proc_stats(self.private.pid)

    def baseline(self, echo_port):
        # One connection first: lazily created things (TLS session state,
        # CivetWeb workers, malloc arenas) are then part of the baseline.
        for _ in range(3):
            self.echo_roundtrip(echo_port)
        self.list()
        time.sleep(0.5)
        return self.stats()

    def wait_back_to_baseline(self, base, what, rss_slack=SLACK_RSS_KIB, timeout=None):
        """Bounded wait until threads and descriptors of both proxies are back to
        the baseline (small slack) and RSS within rss_slack; fails otherwise."""
        timeout = timeout or 60 * SLOW
        names = ("public", "private")
        last = {}
        if MODE != "release":
            rss_slack = None  # sanitizer allocators keep freed memory: RSS means nothing

        def ok():
            cur = self.stats()
            last["cur"] = cur
            for b, c in zip(base, cur):
                if c.threads > b.threads + SLACK_THREADS or c.fds > b.fds + SLACK_FDS:
                    return False
                if rss_slack is not None and c.rss_kib > b.rss_kib + rss_slack:
                    return False
            return True
        if not faultlib.wait_for(ok, timeout, 0.5):
            self.fail("%s: resources not back near the baseline within %ss: %s" % (
                what, timeout, "; ".join("%s baseline %r now %r" % (n, b, c) for n, b, c
                                         in zip(names, base, last["cur"]))))
        for n, b, c in zip(names, base, last["cur"]):
            self.figure("%s.after.%s" % (what, n), "%r (baseline %r)" % (c, b))
        return last["cur"]

    def assert_no_close_wait(self, ports, timeout=None):
        timeout = timeout or 30 * SLOW
        pids = [self.public.pid, self.private.pid]

        def none():
            return not faultlib.sockets_in_state("CLOSE_WAIT", pids, ports)
        if not faultlib.wait_for(none, timeout, 0.5):
            left = faultlib.sockets_in_state("CLOSE_WAIT", pids, ports)
            self.fail("%d sockets of the proxies in CLOSE_WAIT after %ss, e.g. %r"
                      % (len(left), timeout, left[:10]))

    def raise_limits(self, conns):
        self._saved_limits = faultlib.raise_limits(conns, say)
        say("limits: " + faultlib.limits_summary())

    def restart_private(self):
        self.private = self.spawn("private-home", list(self.private_argv))
        return self.private

    def per_conn(self, label, base, cur, n):
        for name, b, c in zip(("public", "private"), base, cur):
            self.figure("%s.%s" % (label, name),
                        "threads/conn=%.3f fds/conn=%.3f rss/conn=%.1fKiB (total %r, baseline %r)"
                        % ((c.threads - b.threads) / n, (c.fds - b.fds) / n,
                           (c.rss_kib - b.rss_kib) / n, c, b))

    # ---- many concurrent connections
    def test_concurrent_connections(self):
        """CONNS connections held at once through one tunnel, each echo-checked
        at open and again after a pause; per-connection costs reported; all
        released afterwards."""
        n = CONNS
        self.raise_limits(n)
        apps_ = self.setup_apps()
        port = apps_["echo"][0]
        base = self.baseline(port)
        hold = faultlib.Hold(port, n, inflight=256)
        try:
            t0 = time.monotonic()
            res = hold.open(timeout=max(60, n / 20) * SLOW)
            self.figure("open.seconds", round(time.monotonic() - t0, 1))
            self.assertEqual(res.failed, 0, "opening %d connections: %r" % (n, res))
            self.assertEqual(hold.count(), n)
            time.sleep(1)
            cur = self.stats()
            self.per_conn("held%d" % n, base, cur, n)
            # Design: one thread and one socket per connection on each side.
            for name, b, c in zip(("public", "private"), base, cur):
                self.assertLessEqual(c.threads - b.threads, 1.1 * n + 16,
                                     "%s: more than ~1 thread per connection" % name)
                self.assertLessEqual(c.fds - b.fds, 1.1 * n + 16,
                                     "%s: more than ~1 descriptor per connection" % name)
            time.sleep(5)
            res = hold.check(1, timeout=max(60, n / 20) * SLOW)
            self.assertEqual(res.failed, 0, "second echo on %d held connections: %r" % (n, res))
            self.assertTrue(self.public.alive() and self.private.alive())
        finally:
            hold.close()
        # Threads and descriptors come back exactly (small slack). Memory: glibc
        # keeps freed thread stacks and arena pages, so RSS after n connections
        # stays above the baseline; a leak shows as more growth when the same
        # load runs again, so round 2 must not add to what round 1 left.
        wait = max(60, n / 50) * SLOW
        post1 = self.wait_back_to_baseline(base, "held%d.round1" % n, rss_slack=None,
                                           timeout=wait)
        time.sleep(2)
        post1 = self.stats()
        hold = faultlib.Hold(port, n, inflight=256)
        try:
            res = hold.open(timeout=max(60, n / 20) * SLOW)
            self.assertEqual(res.failed, 0, "round 2, opening %d connections: %r" % (n, res))
            res = hold.check(2, timeout=max(60, n / 20) * SLOW)
            self.assertEqual(res.failed, 0, "round 2, echo: %r" % res)
        finally:
            hold.close()
        self.wait_back_to_baseline(base, "held%d.round2" % n, rss_slack=None, timeout=wait)
        time.sleep(2)
        post2 = self.stats()
        for name, b, p1, p2 in zip(("public", "private"), base, post1, post2):
            kept = p1.rss_kib - b.rss_kib
            grew = p2.rss_kib - p1.rss_kib
            self.figure("held%d.rss_kept_kib.%s" % (n, name),
                        "after round 1: +%d KiB over baseline; round 2 added %d KiB" % (kept, grew))
            if harness.MODE != "release":
                # ASan keeps freed memory in its quarantine and TSan its
                # shadow, so RSS says nothing about leaks there; LeakSanitizer
                # checks them at exit instead.
                continue
            self.assertLess(grew, max(8192, kept // 10),
                            "%s: RSS grew by %d KiB more after a second round of %d connections "
                            "(round 1 left +%d KiB): memory leaked per connection?"
                            % (name, grew, n, kept))
        self.echo_roundtrip(port)

    # ---- churn
    def test_churn(self):
        """CHURN short connections (one in ten closed by a reset): every echo
        intact, then threads, descriptors and memory back near the baseline and
        no proxy socket left in CLOSE_WAIT."""
        self.raise_limits(256)
        apps_ = self.setup_apps()
        port, target, _ = apps_["echo"]
        base = self.baseline(port)
        t0 = time.monotonic()
        res = faultlib.churn(port, CHURN, parallel=32, timeout=max(120, CHURN / 20) * SLOW)
        dt = time.monotonic() - t0
        self.figure("churn.connections", CHURN)
        self.figure("churn.per_second", round(CHURN / dt))
        self.figure("churn.result", repr(res))
        self.assertEqual(res.failed, 0, "churn of %d connections: %r" % (CHURN, res))
        cur = self.wait_back_to_baseline(base, "churn%d" % CHURN)
        self.figure("churn.rss_growth_kib", {"public": cur[0].rss_kib - base[0].rss_kib,
                                             "private": cur[1].rss_kib - base[1].rss_kib})
        self.assert_no_close_wait([port, target, self.tunnel_port])
        self.echo_roundtrip(port)

    # ---- kills during traffic
    def _traffic(self, port, nbulk=3):
        """Held connections plus bulk echo streams running in threads. Returns
        (hold, threads, results); each result records bytes verified and how the
        stream ended. A stream may be cut, never corrupted."""
        hold = faultlib.Hold(port, 40, inflight=40)
        res = hold.open(30 * SLOW)
        self.assertEqual(res.failed, 0, repr(res))
        results = []
        started = threading.Barrier(nbulk + 1)

        def bulk(i):
            r = {"verified": 0, "end": None, "corrupt": False}
            results.append(r)
            s = connect(port)
            s.settimeout(60 * SLOW)
            chunk = hashlib.sha256(b"%d" % i).digest() * 2048     # 64 KiB
            try:
                started.wait()
                while True:
                    s.sendall(chunk)
                    got = recv_exact(s, len(chunk))
                    if got != chunk:
                        r["corrupt"] = True
                        return
                    r["verified"] += len(chunk)
            except (OSError, AssertionError) as e:
                r["end"] = repr(e)
            finally:
                s.close()
        ths = [threading.Thread(target=bulk, args=(i,), daemon=True) for i in range(nbulk)]
        for t in ths:
            t.start()
        started.wait()
        time.sleep(1)
        return hold, ths, results

    def _assert_traffic_cut(self, hold, ths, results, what):
        left = hold.wait_all_closed(15 * SLOW)
        self.assertEqual(left, 0, "%s: %d held clients still open after %ss"
                         % (what, left, 15 * SLOW))
        for t in ths:
            t.join(30 * SLOW)
            self.assertFalse(t.is_alive(), "%s: a bulk stream is still running" % what)
        for r in results:
            self.assertFalse(r["corrupt"], "%s: a bulk stream received other bytes" % what)
            self.assertGreater(r["verified"], 0, "%s: no traffic before the kill" % what)
        hold.close()

    def test_kill_private_during_traffic(self):
        """SIGKILL the private during traffic: the public's clients are closed
        once the resume grace is over (3 s here: a reset tunnel may come back)
        and its resources released; the restarted private comes back, its
        registrations intact, and new connections work."""
        apps_ = self.setup_apps(via_api=True, grace=3)
        port = apps_["echo"][0]
        base = self.baseline(port)
        before = {a["name"]: a for a in self.list()["apps"]}
        hold, ths, results = self._traffic(port)
        self.private.sigkill()
        self._assert_traffic_cut(hold, ths, results, "private killed")
        self.wait_offline(timeout=20 * SLOW)
        self.assertTrue(self.public.alive(), "public died with the private")
        # The dead tunnel's connections are gone from the public (only the
        # public is compared: the private is a new process).
        self.restart_private()
        self.wait_online(apps=["echo"], timeout=30 * SLOW)
        after = {a["name"]: a for a in self.list()["apps"]}
        for k in ("public_port", "target_host", "target_port", "private"):
            self.assertEqual(after["echo"][k], before["echo"][k], "echo.%s changed" % k)
        harness.wait_until(lambda: self._echo_ok(port), 20 * SLOW, "echo after restart")
        # The new private process starts from the same baseline as the old one.
        self.wait_back_to_baseline(base, "after_private_kill", timeout=30 * SLOW)

    def _echo_ok(self, port):
        try:
            self.echo_roundtrip(port)
            return True
        except (OSError, AssertionError):
            return False

    def _private_app_sockets(self, target):
        """Sockets of the private connected to the app (any state but TIME_WAIT)."""
        inodes = faultlib.socket_inodes(self.private.pid)
        return [s for s in faultlib.tcp_sockets() if s[1] == target and s[3] in inodes]

    def test_kill_public_during_traffic(self):
        """SIGKILL the public during traffic: its clients are closed (by the
        kernel), the private closes its app connections once its resume grace
        is over (3 s here) and logs tunnel_down; the restarted public gets the
        tunnel back by itself, the registration (from apps.json) intact, and new
        connections work."""
        apps_ = self.setup_apps(via_api=True, grace=3)
        port, target, _ = apps_["echo"]
        base = self.baseline(port)
        before = {a["name"]: a for a in self.list()["apps"]}
        hold, ths, results = self._traffic(port)
        self.assertGreater(len(self._private_app_sockets(target)), 40)
        # wait_log counts from the program's own output (without the harness's
        # "# argv" lines) in newer harness versions.
        mark = len(getattr(self.private, "output", self.private.log)())
        self.public.sigkill()
        self._assert_traffic_cut(hold, ths, results, "public killed")
        self.private.wait_log(r"ev=tunnel_down", 20 * SLOW, start=mark)
        ok = faultlib.wait_for(lambda: not self._private_app_sockets(target), 20 * SLOW)
        self.assertTrue(ok, "private still holds %d app connections %ss after the public died"
                        % (len(self._private_app_sockets(target)), 20 * SLOW))
        self.assertTrue(self.private.alive(), "private exited when the public died")
        self.start_public(tunnel_port=self.tunnel_port, web_port=self.web_port,
                          state_dir=self.state_dir, extra=["--resume-grace", "3"])
        self.wait_online(apps=["echo"], timeout=60 * SLOW)
        after = {a["name"]: a for a in self.list()["apps"]}
        for k in ("public_port", "target_host", "target_port", "private"):
            self.assertEqual(after["echo"][k], before["echo"][k], "echo.%s changed" % k)
        harness.wait_until(lambda: self._echo_ok(port), 20 * SLOW, "echo after restart")
        self.wait_back_to_baseline(base, "after_public_kill", timeout=30 * SLOW)

    # ---- slow and stalled peers
    def _sample_rss(self, base, seconds, what):
        """Sample both proxies for `seconds`; fail if RSS grows past the bound."""
        peak = [0, 0]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for i, c in enumerate(self.stats()):
                peak[i] = max(peak[i], c.rss_kib - base[i].rss_kib)
            time.sleep(0.2)
        self.figure("%s.peak_rss_growth_kib" % what, {"public": peak[0], "private": peak[1]})
        for name, g in zip(("public", "private"), peak):
            self.assertLess(g, STALL_RSS_GROWTH_KIB, "%s: %s RSS grew by %d KiB"
                            % (what, name, g))

    def _other_transfer(self, port, nbytes):
        """A full echo transfer of nbytes on another connection, verified."""
        data = os.urandom(1 << 20)
        h_sent = hashlib.sha256()
        h_got = hashlib.sha256()
        s = connect(port)
        s.settimeout(60 * SLOW)
        err = []

        def send():
            try:
                left = nbytes
                while left > 0:
                    k = min(left, len(data))
                    s.sendall(data[:k])
                    h_sent.update(data[:k])
                    left -= k
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        got = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h_got.update(b)
            got += len(b)
        t.join(60 * SLOW)
        s.close()
        self.assertFalse(err, err)
        self.assertEqual(got, nbytes, "other connection: %d of %d bytes came back" % (got, nbytes))
        self.assertEqual(h_got.hexdigest(), h_sent.hexdigest(), "other connection: corrupted")

    def test_slow_reader(self):
        """A client asks the app for STALL bytes and reads nothing for a while:
        both proxies' memory stays bounded and another connection's transfer
        completes; then the client reads everything, intact."""
        apps_ = self.setup_apps(("echo", "source"))
        echo_port, src_port = apps_["echo"][0], apps_["source"][0]
        base = self.baseline(echo_port)
        s = connect(src_port)
        s.sendall(b"%d 11\n" % STALL)
        self._sample_rss(base, 5, "slow_reader")
        self._other_transfer(echo_port, 16 << 20 if MODE == "release" else 4 << 20)
        self._sample_rss(base, 2, "slow_reader2")
        s.settimeout(60 * SLOW)
        h = hashlib.sha256()
        got = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
        s.close()
        self.figure("slow_reader.bytes", got)
        self.assertEqual(got, STALL, "the slow reader got %d of %d bytes" % (got, STALL))
        self.assertEqual(h.hexdigest(), faultlib.source_digest(STALL, 11), "slow reader: corrupted")
        self.wait_back_to_baseline(base, "slow_reader")

    def test_stalled_app(self):
        """An app that accepts and never reads nor answers while a client sends as
        much as it can: memory bounded, other transfers complete; once the app
        goes away the connection is released."""
        apps_ = self.setup_apps(("echo", "stall"))
        echo_port, stall_port = apps_["echo"][0], apps_["stall"][0]
        stall_proc = apps_["stall"][2]
        base = self.baseline(echo_port)
        s = connect(stall_port)
        s.setblocking(False)
        sent = [0]
        block = os.urandom(1 << 16)
        stop = threading.Event()

        def push():
            while not stop.is_set() and sent[0] < STALL:
                try:
                    sent[0] += s.send(block)
                except BlockingIOError:
                    time.sleep(0.01)
                except OSError:
                    return
        t = threading.Thread(target=push, daemon=True)
        t.start()
        self._sample_rss(base, 5, "stalled_app")
        self._other_transfer(echo_port, 16 << 20 if MODE == "release" else 4 << 20)
        stop.set()
        t.join(10)
        self.figure("stalled_app.bytes_accepted_from_client", sent[0])
        self.assertLess(sent[0], STALL, "the stalled path took all %d bytes: no back-pressure?"
                        % STALL)
        # The app goes away (its sockets closed): the connection is released
        # on both sides and the client sees the end.
        stall_proc.stop()
        self.assertTrue(harness.closed_by_peer(s, 20 * SLOW),
                        "client of the stalled app not closed after the app went away")
        s.close()
        self.wait_back_to_baseline(base, "stalled_app")

    def test_half_close_slow_reader(self):
        """A client sends, half-closes, and reads the echo only after a pause:
        memory bounded, the whole echo arrives intact, then the connection is
        released (no CLOSE_WAIT)."""
        apps_ = self.setup_apps()
        port, target, _ = apps_["echo"]
        base = self.baseline(port)
        n = min(STALL, 256 << 20)
        s = connect(port)
        s.settimeout(120 * SLOW)
        h_sent = hashlib.sha256()
        err = []

        def send():
            try:
                block = os.urandom(1 << 20)
                left = n
                while left > 0:
                    k = min(left, len(block))
                    s.sendall(block[:k])
                    h_sent.update(block[:k])
                    left -= k
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        self._sample_rss(base, 4, "half_close")
        h = hashlib.sha256()
        got = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
        t.join(30 * SLOW)
        self.assertFalse(err, err)
        self.assertEqual(got, n)
        self.assertEqual(h.hexdigest(), h_sent.hexdigest(), "half-closed echo corrupted")
        s.close()
        self.wait_back_to_baseline(base, "half_close")
        self.assert_no_close_wait([port, target])

    # ---- state directory faults
    def _tmpfs_state(self, size):
        if not IS_ROOT:
            self.skipTest("state-dir faults need root (mount tmpfs); skipped")
        if shutil.which("mount") is None:
            self.skipTest("no mount(8); skipped")
        d = os.path.join(self.tmp, "state")
        os.makedirs(d)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
                            "faulttest", d], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: %s" % r.stderr.strip())
        # Runs after the harness stopped the processes (registered before? no:
        # cleanups run last-in first-out, and this one is newer), so unmount lazily.
        self.addCleanup(subprocess.run, ["umount", "-l", d], capture_output=True)
        return d

    def _state_fault(self, d, break_it, repair_it, what):
        echo_proc, echo_target = self.app_server("echo")
        self.start_public(state_dir=d)
        self.private = self.start_private()
        self.wait_online()
        p1, p2 = free_port(), free_port()
        self.register("keep", p1, echo_target)
        path = os.path.join(d, "apps.json")
        with open(path, "rb") as f:
            good = f.read()
        self.assertIn(b'"keep"', good)
        break_it()
        st, body = self.api("POST", "/register", {"name": "lost", "public_port": p2,
                                                  "target_host": "127.0.0.1",
                                                  "target_port": echo_target,
                                                  "private": "home"})
        self.figure("%s.register_answer" % what, "%s %r" % (st, body))
        self.assertTrue(500 <= st < 600, "%s: register answered %s %r, expected 5xx"
                        % (what, st, body))
        self.assertIsInstance(body, dict, "%s: error body is not JSON: %r" % (what, body))
        self.assertIsInstance(body.get("error"), str, body)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), good, "%s: apps.json changed" % what)
        json.loads(good)
        names = [a["name"] for a in self.list()["apps"]]
        self.assertNotIn("lost", names, "%s: registration made although not saved" % what)
        try:
            socket.create_connection(("127.0.0.1", p2), timeout=2).close()
            self.fail("%s: port %d of the unsaved app listens" % (what, p2))
        except OSError:
            pass
        self.assertTrue(self.public.alive())
        self.echo_roundtrip(p1)
        # Unregister must not lose the file either.
        st, body = self.api("POST", "/unregister", {"name": "keep"})
        self.assertTrue(st >= 500 or st == 200, (st, body))
        if st >= 500:
            self.assertIsInstance(body, dict)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), good, "%s: apps.json changed by unregister" % what)
        repair_it()
        # Restart: the old registrations load.
        self.assertEqual(self.public.stop(), 0)
        self.start_public(tunnel_port=self.tunnel_port, web_port=self.web_port, state_dir=d)
        names = [a["name"] for a in self.list()["apps"]]
        if st >= 500:
            self.assertIn("keep", names, "%s: registration lost after restart" % what)
        self.assertNotIn("lost", names)
        # And saving works again.
        self.register("lost", p2, echo_target)

    def test_state_dir_read_only(self):
        d = self._tmpfs_state("4m")

        def ro():
            subprocess.run(["mount", "-o", "remount,ro", d], check=True)

        def rw():
            subprocess.run(["mount", "-o", "remount,rw", d], check=True)
        self._state_fault(d, ro, rw, "read_only")

    def test_state_dir_full(self):
        d = self._tmpfs_state("1m")
        filler = os.path.join(d, "filler")

        def fill():
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            st = os.statvfs(d)
            self.assertEqual(st.f_bavail, 0, "tmpfs not full")

        def empty():
            os.unlink(filler)
        self._state_fault(d, fill, empty, "full")

    # ---- valgrind
    def test_valgrind_session(self):
        """Both proxies under valgrind memcheck: a few connections, some data,
        a clean SIGTERM; no invalid access, no definite leak."""
        if MODE != "release":
            self.skipTest("valgrind runs on the release build only")
        if not shutil.which("valgrind"):
            self.skipTest("valgrind not installed (apt-get install valgrind)")
        vg = ["valgrind", "--tool=memcheck", "--error-exitcode=1", "--leak-check=full",
              "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
              "--track-origins=no", "--num-callers=30"]
        slow = 20
        echo_proc, target = self.app_server("echo")
        self.tunnel_port, self.web_port = free_port(), free_port()
        state = os.path.join(self.tmp, "state")
        os.makedirs(state)
        pub = self.spawn("public-vg", vg + [
            self.bin("proxy_public"), str(self.tunnel_port), str(self.web_port), "--bind",
            "127.0.0.1", "--state-dir", state, "--log-level", "debug", "--token", self.token]
            + harness.EXTRA_ARGS)
        self.public = pub
        self.wait_api_up(pub, timeout=60 * slow)
        app_port = free_port()
        priv = self.spawn("private-vg", vg + [
            self.bin("proxy_private"), "127.0.0.1", str(self.tunnel_port), "--name", "home",
            "--log-level", "debug", "--known-hosts", os.path.join(self.tmp, "known_hosts"),
            "--token", self.token, "--register",
            "echo:%d:127.0.0.1:%d" % (app_port, target)] + harness.EXTRA_ARGS)
        self.private = priv
        self.wait_online(apps=["echo"], timeout=60 * slow)
        for i in range(4):
            with socket.create_connection(("127.0.0.1", app_port), timeout=30 * slow) as s:
                data = os.urandom(200000 * (i + 1))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(60 * slow)
                got = harness.recv_all(s)
                self.assertEqual(got, data, "echo under valgrind")
        # One the client abandons midway, and a refused target.
        s = socket.create_connection(("127.0.0.1", app_port), timeout=30 * slow)
        s.sendall(b"x" * 1000)
        s.close()
        self.register("refused", free_port(), free_port())
        self.list()
        time.sleep(2)
        rcs = {}
        for p in (priv, pub):
            rcs[p.name] = p.stop(timeout=180)
        for p in (priv, pub):
            text = p.log()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
            self.figure("valgrind.%s" % p.name, m.group(0) if m else "no summary")
            leak = re.search(r"definitely lost: ([\d,]+) bytes", text)
            if leak:
                self.figure("valgrind.%s.definitely_lost" % p.name, leak.group(1))
            self.assertIsNotNone(m, "%s: no valgrind summary (exit %r)" % (p.name, rcs[p.name]))
            self.assertEqual(m.group(1), "0", "%s: valgrind errors; log %s" % (p.name, p.log_path))
            self.assertEqual(rcs[p.name], 0, "%s exit code under valgrind" % p.name)

    # ---- the long mixed soak
    def test_soak_mixed(self):
        """Several minutes of mixed traffic (held connections, bulk echo, churn)
        with the private SIGKILLed and restarted periodically. Nothing corrupt,
        the public never dies, service always comes back, resources back near
        the baseline at the end."""
        if not SOAK:
            self.skipTest("soak only (make soak)")
        seconds = int(os.environ.get("SOAK_SECONDS", "300"))
        self.raise_limits(4000)
        apps_ = self.setup_apps(("echo", "source"), via_api=True)
        port, target, _ = apps_["echo"]
        src = apps_["source"][0]
        base = self.baseline(port)
        stop = threading.Event()
        stats = {"bulk_ok": 0, "bulk_cut": 0, "corrupt": 0, "churn_ok": 0, "churn_failed": 0,
                 "source_ok": 0, "source_cut": 0, "kills": 0}
        lock = threading.Lock()

        def add(k, v=1):
            with lock:
                stats[k] += v

        def bulk_loop(i):
            while not stop.is_set():
                try:
                    with connect(port) as s:
                        s.settimeout(30 * SLOW)
                        data = os.urandom(1 << 20)
                        for _ in range(8):
                            s.sendall(data)
                            if recv_exact(s, len(data)) != data:
                                add("corrupt")
                                break
                    add("bulk_ok")
                except (OSError, AssertionError):
                    add("bulk_cut")
                    time.sleep(0.5)

        def source_loop(i):
            while not stop.is_set():
                n = (32 << 20) + i
                try:
                    with connect(src) as s:
                        s.settimeout(30 * SLOW)
                        s.sendall(b"%d %d\n" % (n, i))
                        h = hashlib.sha256()
                        got = 0
                        while True:
                            b = s.recv(1 << 20)
                            if not b:
                                break
                            h.update(b)
                            got += len(b)
                    if got == n:
                        if h.hexdigest() != faultlib.source_digest(n, i):
                            add("corrupt")
                        else:
                            add("source_ok")
                    else:
                        add("source_cut")
                except OSError:
                    add("source_cut")
                    time.sleep(0.5)

        def churn_loop():
            while not stop.is_set():
                r = faultlib.churn(port, 500, parallel=16, timeout=60)
                add("churn_ok", r.ok)
                add("churn_failed", r.failed)
                if r.errors.get("corrupt"):
                    add("corrupt", r.errors["corrupt"])
                if r.failed:
                    time.sleep(0.5)

        workers = [threading.Thread(target=bulk_loop, args=(i,), daemon=True) for i in range(2)]
        workers += [threading.Thread(target=source_loop, args=(i,), daemon=True)
                    for i in range(2)]
        workers.append(threading.Thread(target=churn_loop, daemon=True))
        for w in workers:
            w.start()
        end = time.monotonic() + seconds
        hold = faultlib.Hold(port, 2000, inflight=128)
        try:
            r = hold.open(120)
            self.assertEqual(r.failed, 0, repr(r))
            next_kill = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(1)
                self.assertTrue(self.public.alive(), "public died during the soak:\n"
                                + self.public.log_tail())
                if time.monotonic() >= next_kill:
                    self.private.sigkill()
                    add("kills")
                    left = hold.wait_all_closed(20 * SLOW)
                    self.assertEqual(left, 0, "held clients not closed after a private kill")
                    hold.close()
                    self.restart_private()
                    self.wait_online(apps=["echo", "source"], timeout=30 * SLOW)
                    hold = faultlib.Hold(port, 2000, inflight=128)
                    r = hold.open(120)
                    self.assertEqual(r.failed, 0, "re-opening after a kill: %r" % r)
                    next_kill = time.monotonic() + 45
                if int(time.monotonic()) % 20 == 0:
                    say("soak: %r public %r private %r" % (stats, *self.stats()))
            r = hold.check(9, 120)
            self.assertEqual(r.failed, 0, "held connections at the end: %r" % r)
        finally:
            stop.set()
            hold.close()
            for w in workers:
                w.join(120)
        self.figure("soak.seconds", seconds)
        self.figure("soak.counts", dict(stats))
        self.assertEqual(stats["corrupt"], 0, "corrupted transfers during the soak")
        self.assertGreater(stats["bulk_ok"] + stats["source_ok"], 0)
        self.wait_back_to_baseline(base, "soak", timeout=120)
        self.assert_no_close_wait([port, target])
        self.echo_roundtrip(port)


if __name__ == "__main__":
    harness.main()
