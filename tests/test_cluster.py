"""Several proxy_public nodes of one cluster (--cluster, issue 13), with a
real redis-server (or a Sentinel-watched primary and replica), HAProxy
running docs/haproxy-cluster.cfg in front of them, and one proxy_private.

The nodes listen on 127.0.0.11-14 (one address each, the same port numbers),
HAProxy takes the clients on 127.0.0.1 and connects to the nodes from
127.0.0.3 (their --accept-proxy-from) with PROXY protocol version 2. All
processes come from tests/cluster_lib.py and are stopped with the test.

InfraTest checks the machinery on its own (Redis, Sentinel, HAProxy, nodes
without --cluster), so that a failure of ClusterTest is about the cluster.
Each test skips with "SKIPPED: ..." when redis-server, redis-sentinel or
haproxy is missing, and ClusterTest also when proxy_public has no --cluster."""
import json
import os
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import harness
from harness import ProxyTest, SLOW, apps, wait_until
import cluster_lib as cl
from cluster_lib import BALANCER, FRONT, NODE_ADDRS, Node, Redis
from test_proxy_protocol import RecordingServer, V2_SIG

CLIENT = "127.0.0.99"   # a client of HAProxy with an address of its own

# Small enough for the sanitizer builds, large enough to cross several reads.
CONN_BYTES = {"release": 32768, "asan": 16384, "tsan": 8192}[harness.MODE]
STORE_DOWN_MSG = "the cluster store (Redis) is unreachable"


def note(test, text):
    """A line for TEST_OUT/notes.txt (timings: unittest's own output stays
    one line a test)."""
    with open(os.path.join(test.out_dir, "notes.txt"), "a") as f:
        f.write(text + "\n")


class InfraTest(ProxyTest):
    """The pieces the cluster tests stand on, without the cluster code."""

    needs_binaries = False

    def setUp(self):
        reason = cl.skip_reason()
        if reason:
            self.skipTest(reason)
        super().setUp()

    def test_redis_ping_and_persistence(self):
        """Redis answers PING, keeps a hash across SIGTERM and a start on the
        same port and folder (append-only file), and refuses while stopped."""
        r = Redis(self)
        self.assertTrue(r.ping())
        self.assertEqual(r.cmd("HSET", "natproxy:test", "a", "1"), 1)
        r.stop()
        with self.assertRaises(OSError):
            cl.redis_cmd(r.port, "PING", timeout=2)
        r.start()
        self.assertEqual(r.cmd("HGET", "natproxy:test", "a"), "1")
        self.assertEqual(r.cmd("SET", "k", "v", "PX", "300"), "OK")
        self.assertLessEqual(r.cmd("PTTL", "k"), 300)
        with self.assertRaises(cl.RespError):
            r.cmd("NOSUCHCOMMAND")

    def test_sentinel_failover(self):
        """A primary, a replica, three sentinels: a write WAITed for by the
        replica survives kill -9 of the primary, and the replica is
        promoted within the bound."""
        primary = Redis(self, "redis-primary")
        replica = Redis(self, "redis-replica", replica_of=primary)
        primary.wait_replica_online()
        sent = cl.Sentinels(self, primary)
        sent.wait_ready()
        self.assertEqual(sent.primary_port(), primary.port)
        with cl.Resp(primary.port) as c:
            self.assertEqual(c.cmd("HSET", "natproxy:apps", "x", "{}"), 1)
            self.assertEqual(c.cmd("WAIT", 1, 5000), 1)
        primary.kill()
        t0 = time.monotonic()
        sent.wait_promoted(replica.port)
        took = time.monotonic() - t0
        self.assertEqual(cl.info(replica.port, "replication")["role"], "master")
        self.assertEqual(replica.cmd("HGET", "natproxy:apps", "x"), "{}")
        self.assertEqual(replica.cmd("HSET", "natproxy:apps", "y", "{}"), 1)
        note(self, "promotion took %.1f s" % took)

    def test_haproxy_forwards_to_plain_echo_servers(self):
        """docs/haproxy-cluster.cfg with plain TCP listeners on the three
        node addresses: the client's port is kept, each connection starts
        with a v2 PROXY header naming the client 127.0.0.99, roundrobin
        spreads them, the health check is a v2 LOCAL header on the web
        port, and a dead server is taken out (connections keep working)."""
        lo = cl.free_ports_on(NODE_ADDRS[:3] + [FRONT], 2)
        web = cl.free_ports_on(NODE_ADDRS[:3])
        servers = {}
        for a in NODE_ADDRS[:3]:
            servers[a] = (self.server(RecordingServer, host=a, port=lo + 1),
                          self.server(RecordingServer, host=a, port=web))
        ha = cl.HAProxy(self, NODE_ADDRS[:3], lo, lo + 1, web)
        for srv in servers.values():  # the checks reach every web port
            wait_until(lambda s=srv[1]: s.accepted >= 1, 10 * SLOW, "a health check")
        with srv[1].cond:
            self.assertTrue(bytes(srv[1].streams[0]).startswith(V2_SIG + bytes([0x20, 0])),
                            srv[1].streams[0])
        for i in range(6):
            with cl.connect(FRONT, lo + 1, source=CLIENT) as s:
                s.sendall(b"ping %d\n" % i)
                self.assertEqual(harness.recv_exact(s, 7), b"ping %d\n" % i)
                cport = s.getsockname()[1]
            want = (V2_SIG + bytes([0x21, 0x11, 0, 12]) + socket.inet_aton(CLIENT)
                    + socket.inet_aton(FRONT) + struct.pack(">HH", cport, lo + 1))
            hit = [a for a, srv in servers.items()
                   if any(bytes(st).startswith(want) for st in srv[0].streams)]
            self.assertEqual(len(hit), 1, "connection %d: %s" % (i, hit))
        self.assertEqual(sorted(s[0].accepted for s in servers.values()), [2, 2, 2])
        # The second node's listeners go away: out after one check, and
        # meanwhile a refused connection is redispatched.
        mark = ha.mark()
        for srv in servers[NODE_ADDRS[1]]:
            srv.close()
        for i in range(6):
            with cl.connect(FRONT, lo + 1) as s:
                s.sendall(b"x")
                self.assertEqual(harness.recv_exact(s, 1), b"x")
        ha.wait_state("n2", "DOWN", mark)

    def test_nodes_without_cluster(self):
        """Three proxy_public on 127.0.0.11-13 with one certificate, token
        and the same port numbers (no --cluster); a private on the first;
        kill -9 and a start with the same arguments."""
        for b in ("proxy_public", "proxy_private"):
            if not os.access(self.bin(b), os.X_OK):
                self.fail("%s is missing (build it first)" % self.bin(b))
        crt, key = cl.make_cert(self.tmp)
        tport, wport = cl.free_ports_on(NODE_ADDRS), cl.free_ports_on(NODE_ADDRS)
        nodes = []
        for i, a in enumerate(NODE_ADDRS[:3]):
            n = Node(self, "n%d" % (i + 1), a, tport, wport, "unused", crt, key)
            # No cluster code yet: the same node without the cluster options.
            j = n.argv.index("--cluster")
            del n.argv[j:j + 6]
            nodes.append(n.start())
        echo = self.server(apps.EchoServer)
        app_port = cl.free_ports_on(NODE_ADDRS)
        priv = self.spawn("private-home", cl.private_argv(self, nodes[0]) + [
            "--register", "e:%d:127.0.0.1:%d" % (app_port, echo.port)])

        def online():
            a = self.find(nodes[0].list()["apps"], "e")
            return a and a["online"]
        wait_until(online, 20 * SLOW, "app e online on n1")
        cl.echo_check(nodes[0].addr, app_port, CONN_BYTES)
        self.assertFalse(cl.listening(nodes[1].addr, app_port))
        nodes[0].kill()
        nodes[0].start()
        wait_until(online, 30 * SLOW, "app e online on n1 again")
        cl.echo_check(nodes[0].addr, app_port, CONN_BYTES)
        self.assertTrue(priv.alive())


class ClusterTest(ProxyTest):
    """Nodes of one cluster, the private, the apps."""

    def setUp(self):
        reason = cl.skip_reason()
        if reason:
            self.skipTest(reason)
        super().setUp()
        if not cl.public_has_cluster(self.bin("proxy_public")):
            self.skipTest("SKIPPED: this proxy_public has no --cluster option "
                          "(issue 13 not built in)")
        self.nodes = []
        self.ha = None
        self.redis = None

    # ---- building the cluster
    def start_cluster(self, nodes=3, store_url=None, haproxy=False, app_ports=4,
                      private=True):
        """nodes nodes (n1..), a Redis unless store_url, the private "home"
        dialling n1 only and online on every node, an echo app server,
        HAProxy in front of n1-n3 when asked. self.app_lo is the first of
        app_ports ports free on every node address and the front."""
        self.cert, self.key = cl.make_cert(self.tmp)
        self.tunnel_port = cl.free_ports_on(NODE_ADDRS)
        self.web_port = cl.free_ports_on(NODE_ADDRS)
        self.app_lo = cl.free_ports_on(NODE_ADDRS + [FRONT], app_ports)
        self.app_hi = self.app_lo + app_ports - 1
        if store_url is None:
            self.redis = Redis(self)
            store_url = self.redis.url()
        self.store_url = store_url
        for i in range(nodes):
            self.add_node()
        names = [n.name for n in self.nodes]
        for n in self.nodes:
            self.wait_nodes(n, names)
        self.echo = self.server(apps.EchoServer)
        if private:
            self.priv = self.spawn("private-home", cl.private_argv(self, self.nodes[0]))
            self.wait_private(names)
        if haproxy:
            self.ha = cl.HAProxy(self, [n.addr for n in self.nodes[:3]], self.app_lo,
                                 self.app_hi, self.web_port)

    def add_node(self, start=True):
        i = len(self.nodes)
        n = Node(self, "n%d" % (i + 1), NODE_ADDRS[i], self.tunnel_port, self.web_port,
                 self.store_url, self.cert, self.key)
        self.nodes.append(n)
        if start:
            n.start()
            n.wait_log(r"ev=cluster_store_up url=\S+ node=%s\b" % n.name, 20 * SLOW)
        return n

    def node(self, name):
        return [n for n in self.nodes if n.name == name][0]

    # ---- waiting for the cluster's view
    def wait_nodes(self, node, names, timeout=None):
        """node's /list cluster.nodes is exactly names."""
        want = sorted(names)
        last = {}

        def ok():
            last["v"] = node.node_names()
            return last["v"] == want
        try:
            wait_until(ok, timeout or 20 * SLOW, "%s listing nodes %s" % (node.name, want))
        except AssertionError as e:
            raise AssertionError("%s; last: %s" % (e, last.get("v")))

    def wait_private(self, names, on=None, timeout=None):
        """On every node of on (default: of names), /list has the private
        online with "nodes" listing every one of names."""
        want = sorted(names)
        on = on or [self.node(x) for x in names]
        last = {}

        def ok():
            if not self.priv.alive():
                raise AssertionError("the private exited:\n" + self.priv.log_tail())
            for n in on:
                pv = self.find(n.list()["privates"], "home")
                last["v"] = (n.name, pv)
                if not pv or pv.get("online") is not True or \
                        sorted(pv.get("nodes") or []) != want:
                    return False
            return True
        try:
            wait_until(ok, timeout or 30 * SLOW, "the private online with nodes %s" % want)
        except AssertionError as e:
            raise AssertionError("%s; last: %s" % (e, last.get("v")))

    def wait_app_online(self, name, nodes=None, timeout=None):
        nodes = nodes or self.nodes

        def ok():
            for n in nodes:
                a = self.find(n.list()["apps"], name)
                if not a or a.get("online") is not True:
                    return False
                if not cl.listening(n.addr, a["public_port"]):
                    return False
            return True
        wait_until(ok, timeout or 20 * SLOW, "app %s online on %s" % (
            name, [n.name for n in nodes]))

    def register(self, node, name, port, target_port=None, expect=201, **more):
        body = {"name": name, "public_port": port, "target_host": "127.0.0.1",
                "target_port": target_port or self.echo.port, "private": "home"}
        body.update(more)
        st, resp = node.api("POST", "/register", body)
        if expect is not None:
            self.assertEqual(st, expect, "register %r on %s -> %s %r" % (body, node.name,
                                                                          st, resp))
        return st, resp

    def app_of(self, node, name):
        return self.find(node.list()["apps"], name)

    def wait_private_nodes_line(self, names, start, timeout=None):
        """The private logs ev=cluster_nodes nodes=A,B,... naming exactly
        names (in any order) after character start of its output."""
        want = sorted(names)

        def ok():
            for m in re.finditer(r"ev=cluster_nodes nodes=(\S+)", self.priv.output()[start:]):
                if sorted(m.group(1).split(",")) == want:
                    return True
            return False
        wait_until(ok, timeout or 10 * SLOW, "the private logging ev=cluster_nodes nodes=%s"
                   % ",".join(want))

    def private_log_since(self, mark):
        return self.priv.output()[mark:]

    # ------------------------------------------------------------------
    def test_app_reachable_through_every_node_and_haproxy(self):
        """An app registered on n1 is served by n2 and n3 and through
        HAProxy; 200 connections through HAProxy (roundrobin) carry
        checksummed data and are spread over the three nodes; /list shows
        the cluster, its nodes, the private's nodes and summed counters."""
        self.start_cluster(haproxy=True)
        n1, n2, n3 = self.nodes
        port = self.app_lo
        self.register(n1, "web", port)
        self.wait_app_online("web")
        for n in self.nodes:
            cl.echo_check(n.addr, port, CONN_BYTES)
        cl.echo_check(FRONT, port, CONN_BYTES)

        errors = []

        def one(i):
            try:
                cl.echo_check(FRONT, port, CONN_BYTES, seed=i)
            except (OSError, AssertionError) as e:
                errors.append("connection %d: %r" % (i, e))
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, range(200)))
        self.assertEqual(errors, [], "%d of 200 failed" % len(errors))

        def counts():
            return [self.app_of(n, "web")["total_connections"] for n in self.nodes]
        # 3 direct + 1 + 200 through HAProxy, every node its share.
        wait_until(lambda: sum(counts()) == 204, 10 * SLOW, "204 connections counted")
        c = counts()
        for n, k in zip(self.nodes, c):
            self.assertGreaterEqual(k, 40, "node %s served %d of 204: %s" % (n.name, k, c))
        for n in self.nodes:
            # The other nodes' counters are their last beat's (one a second):
            # the 204 and the closing of the last ones show within a beat or two.
            wait_until(lambda n=n: (lambda c: (c["total_connections"], c["active_connections"]))(
                           self.app_of(n, "web")["cluster"]) == (204, 0),
                       10 * SLOW, "%s's cluster counters summing 204, none active" % n.name)
            a = self.app_of(n, "web")
            self.assertGreaterEqual(a["cluster"]["bytes_in"], 204 * CONN_BYTES, a)
            self.assertGreaterEqual(a["cluster"]["bytes_out"], 204 * CONN_BYTES, a)

        for n in self.nodes:
            c = n.cluster()
            self.assertEqual(c["store"], "up", c)
            self.assertEqual(c["url"], self.store_url, c)
            self.assertEqual(c["node"], n.name, c)
            by = {x["name"]: x for x in c["nodes"]}
            self.assertEqual(sorted(by), ["n1", "n2", "n3"], c)
            for m in self.nodes:
                self.assertEqual(by[m.name]["address"], m.advertise, c)
                self.assertIs(by[m.name]["self"], m is n, c)
                self.assertIsInstance(by[m.name]["up_since"], str, c)
                self.assertIsInstance(by[m.name]["connections"], int, c)
            # Each node's entry counts its tunnel (refreshed every second).
            wait_until(lambda n=n: all(x["tunnels"] >= 1 for x in n.cluster()["nodes"]),
                       5 * SLOW, "%s's nodes each with a tunnel" % n.name)
            self.assertEqual(n.metric("nat_cluster_store_up"), 1)
            self.assertEqual(n.metric("nat_cluster_nodes"), 3)
        # The private's log names the nodes it learnt and each session.
        self.wait_private_nodes_line(["n1", "n2", "n3"], 0)
        for n in (n2, n3):
            self.priv.wait_log(r"ev=node_session_start node=%s address=%s" % (
                n.name, n.advertise.replace(".", r"\.")), 5 * SLOW)
        # What Redis holds: the app and its port, every node's entry.
        entry = self.redis.cmd("HGET", "natproxy:apps", "web")
        self.assertIsInstance(json.loads(entry), dict, entry)
        self.assertEqual(self.redis.cmd("HGET", "natproxy:ports", "tcp:%d" % port), "web")
        held = [repr(cl.pairs(self.redis.cmd("HGETALL", k)))
                for k in ("natproxy:apps", "natproxy:ports")]
        for n in self.nodes:
            self.assertEqual(self.redis.cmd("EXISTS", "natproxy:node:" + n.name), 1)
            held.append(self.redis.cmd("GET", "natproxy:node:" + n.name))
        # Redis holds no secret: not the token, not the TLS key.
        with open(self.key) as f:
            key_pem = "".join(f.read().splitlines()[1:-1])[:40]
        for text in held:
            self.assertNotIn(self.token, text)
            self.assertNotIn(key_pem, text.replace("\\n", ""))

    def test_concurrent_registrations_one_wins(self):
        """The same port (other names) on n1 and n2 at the same moment: one
        201 and one 409, twenty times with fresh ports; also the same name
        with two ports, five times. The loser is nowhere, the winner
        everywhere."""
        self.start_cluster()
        n1, n2, n3 = self.nodes
        winners, losers = [], []
        rounds = [("port", i) for i in range(20)] + [("name", i) for i in range(5)]
        for kind, i in rounds:
            p1 = cl.free_ports_on(NODE_ADDRS)
            p2 = p1 if kind == "port" else cl.free_ports_on(NODE_ADDRS)
            name1 = "p%da" % i if kind == "port" else "same%d" % i
            name2 = "p%db" % i if kind == "port" else "same%d" % i
            # Which node goes first in the thread list alternates.
            jobs = [(n1, name1, p1), (n2, name2, p2)]
            if i % 2:
                jobs.reverse()
            barrier = threading.Barrier(len(jobs))
            res = {}

            def go(node, name, port):
                barrier.wait(10 * SLOW)
                res[node.name] = (self.register(node, name, port, expect=None), name, port)
            ts = [threading.Thread(target=go, args=j, daemon=True) for j in jobs]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30 * SLOW)
            self.assertEqual(len(res), 2, "a registration did not return: %s" % res)
            got = sorted(r[0][0] for r in res.values())
            self.assertEqual(got, [201, 409], "%s round %d: %s" % (kind, i, res))
            win = [r for r in res.values() if r[0][0] == 201][0]
            lose = [r for r in res.values() if r[0][0] == 409][0]
            winners.append((win[1], win[2]))
            if kind == "port":
                losers.append(lose[1])
        for n in self.nodes:
            def ok(n=n):
                apps_ = {a["name"]: a["public_port"] for a in n.list()["apps"]}
                return all(apps_.get(w) == p for w, p in winners) and \
                    not any(x in apps_ for x in losers)
            wait_until(ok, 10 * SLOW, "%s listing the %d winners, no loser" % (n.name,
                                                                                len(winners)))
        for w, p in winners:
            self.assertEqual(self.redis.cmd("HGET", "natproxy:ports", "tcp:%d" % p), w)
        for x in losers:
            self.assertIsNone(self.redis.cmd("HGET", "natproxy:apps", x))
        # One of them works through n3, which took part in nothing.
        w, p = winners[0]
        self.wait_app_online(w, [n3])
        cl.echo_check(n3.addr, p, CONN_BYTES)

    def test_node_killed_and_restarted(self):
        """kill -9 of n2 under traffic through HAProxy: new connections keep
        working, the private keeps its tunnels to n1 and n3, n2's Redis entry
        expires within ~6 s and the others drop it; n2 started again with the
        same arguments rejoins and the private reconnects to it."""
        self.start_cluster(haproxy=True)
        n1, n2, n3 = self.nodes
        port = self.app_lo
        self.register(n1, "web", port)
        self.wait_app_online("web")
        pttl = self.redis.cmd("PTTL", "natproxy:node:n2")
        self.assertTrue(0 < pttl <= 5000, "natproxy:node:n2 PTTL %r" % pttl)

        traffic = cl.Traffic(FRONT, port, size=CONN_BYTES)
        wait_until(lambda: traffic.ok_count() >= 10, 20 * SLOW, "traffic through HAProxy")
        pmark, hmark = len(self.priv.output()), self.ha.mark()
        nmarks = {n.name: n.mark() for n in (n1, n3)}
        t_kill = time.monotonic()
        n2.kill()
        self.ha.wait_state("n2", "DOWN", hmark)
        t_down = time.monotonic()
        # Redis forgets n2 by itself (PX 5000, refreshed every second).
        wait_until(lambda: self.redis.cmd("EXISTS", "natproxy:node:n2") == 0,
                   6 * SLOW + 1, "natproxy:node:n2 expiring")
        gone_after = time.monotonic() - t_kill
        for n in (n1, n3):
            self.wait_nodes(n, ["n1", "n3"])
            n.wait_log(r"ev=cluster_node_gone node=n2\b", 5 * SLOW, nmarks[n.name])
        time.sleep(0.5 * SLOW)
        results = traffic.stop()
        late = traffic.failures_started_after(t_down)
        self.assertEqual(late, [], "connections through HAProxy failed after n2 was out")
        self.assertGreater(sum(1 for r in results if r[0] >= t_down and r[2] is None), 5,
                           "too few connections after the kill")
        for i in range(30):
            cl.echo_check(FRONT, port, CONN_BYTES)
        # The private kept its tunnels to n1 and n3.
        since = self.private_log_since(pmark)
        for other in (n1, n3):
            for line in since.splitlines():
                if "ev=tunnel_down" in line or "ev=node_session_stop" in line:
                    self.assertNotIn("node=%s " % other.name, line + " ", line)
                    self.assertNotIn(other.advertise, line, line)
        for n in (n1, n3):
            pv = self.find(n.list()["privates"], "home")
            self.assertTrue(pv["online"], pv)
            self.assertIn(n.name, pv["nodes"], pv)
            cl.echo_check(n.addr, port, CONN_BYTES)
        self.assertTrue(self.priv.alive())

        # Back with the same arguments: it rejoins, the private returns to it.
        pmark, hmark = len(self.priv.output()), self.ha.mark()
        n2.start()
        for n in self.nodes:
            self.wait_nodes(n, ["n1", "n2", "n3"])
        n1.wait_log(r"ev=cluster_node_up node=n2 address=%s" % n2.advertise.replace(".", r"\."),
                    10 * SLOW, nmarks["n1"])
        # A new session (the private dropped n2 when NODES no longer had
        # it), or the old one's reconnect: either way a tunnel up to n2.
        self.priv.wait_log(r"ev=(node_session_start|tunnel_up)\b[^\n]* node=n2\b", 30 * SLOW,
                           pmark)
        self.wait_private(["n1", "n2", "n3"])
        self.wait_app_online("web", [n2])
        self.ha.wait_state("n2", "UP", hmark)
        for i in range(30):
            cl.echo_check(FRONT, port, CONN_BYTES)
        self.assertGreater(self.app_of(n2, "web")["total_connections"], 0,
                           "HAProxy sent nothing to the restarted n2")
        note(self, "natproxy:node:n2 gone %.1f s after kill -9" % gone_after)

    def test_redis_stopped_for_10s(self):
        """Redis stopped for 10 s: relaying goes on (open and new
        connections, every node), registrations answer 503 and /list says
        "down"; after it is back, registration works and every app
        registered before is still there.

        Redis is really stopped (SIGTERM, it exits; started again on the same
        port and folder: its append-only file, fsynced on every write, brings
        the data back). A SIGSTOPped Redis would still accept connections in
        the kernel's backlog: a hang, not the unreachable store this is
        about."""
        self.start_cluster()
        n1, n2, n3 = self.nodes
        before = {"a0": self.app_lo, "a1": self.app_lo + 1, "a2": self.app_lo + 2}
        self.register(n1, "a0", before["a0"])
        self.register(n1, "a1", before["a1"])
        self.register(n2, "a2", before["a2"])
        for a in before:
            self.wait_app_online(a)
        # A connection open across the outage.
        held = cl.connect(n3.addr, before["a0"])
        self.addCleanup(held.close)
        held.sendall(b"before\n")
        self.assertEqual(harness.recv_exact(held, 7), b"before\n")

        marks = {n.name: n.mark() for n in self.nodes}
        pmark = len(self.priv.output())
        t_stop = time.monotonic()
        self.redis.stop()
        for n in self.nodes:
            # The spec's line is ev=cluster_store_down err="..."; other
            # key=value pairs (url=, msg=) may stand around it.
            n.wait_log(r'ev=cluster_store_down\b[^\n]* err="', 10 * SLOW, marks[n.name])
            wait_until(lambda n=n: n.cluster()["store"] == "down", 10 * SLOW,
                       "%s's /list saying the store is down" % n.name)
        st, resp = self.register(n1, "during", self.app_lo + 3, expect=503)
        self.assertTrue(resp["error"].startswith(STORE_DOWN_MSG), resp)
        st, resp = n2.api("POST", "/unregister", {"name": "a1"})
        self.assertEqual(st, 503, resp)
        self.assertTrue(resp["error"].startswith(STORE_DOWN_MSG), resp)
        self.assertEqual(n3.metric("nat_cluster_store_up"), 0)
        # Relaying goes on for the whole outage.
        rounds = 0
        while time.monotonic() - t_stop < 10 or rounds == 0:
            for n in self.nodes:
                for a, p in before.items():
                    cl.echo_check(n.addr, p, CONN_BYTES)
            held.sendall(b"during %d\n" % rounds)
            self.assertEqual(harness.recv_exact(held, len(b"during %d\n" % rounds)),
                             b"during %d\n" % rounds)
            rounds += 1
            time.sleep(0.5)
        for n in self.nodes:
            self.assertEqual(n.cluster()["store"], "down")

        self.redis.start()
        for n in self.nodes:
            m = n.wait_log(r"ev=cluster_store_up url=\S+ node=%s\b" % n.name, 20 * SLOW,
                           marks[n.name])
            # Read again from scratch after the store came back.
            n.wait_log(r"ev=cluster_resync apps=\d+", 10 * SLOW, marks[n.name] + m.end())
            wait_until(lambda n=n: n.cluster()["store"] == "up", 10 * SLOW,
                       "%s's /list saying the store is up" % n.name)
        self.register(n2, "after", self.app_lo + 3)
        self.wait_app_online("after")
        # The nodes' entries expired during the outage; until each node has
        # written its own again, one that reads the node list would find
        # itself alone. Past a few refreshes: the private must not have
        # been told to drop a node (that would cut its connections).
        time.sleep(3 * SLOW)
        dropped = [line for line in self.private_log_since(pmark).splitlines()
                   if "ev=node_session_stop" in line or "ev=tunnel_down" in line]
        self.assertFalse(dropped, "the private dropped tunnels across the store's outage (a "
                         "NODES list without the other nodes, read before they had "
                         "refreshed their entries?):\n" + "\n".join(dropped))
        for n in self.nodes:
            names = {a["name"]: a["public_port"] for a in n.list()["apps"]}
            for a, p in before.items():
                self.assertEqual(names.get(a), p, "%s lost %s: %s" % (n.name, a, names))
            self.assertNotIn("during", names)
            for a, p in list(before.items()) + [("after", self.app_lo + 3)]:
                cl.echo_check(n.addr, p, CONN_BYTES)
        stored = cl.pairs(self.redis.cmd("HGETALL", "natproxy:apps"))
        self.assertEqual(sorted(stored), ["a0", "a1", "a2", "after"])
        held.sendall(b"after\n")
        self.assertEqual(harness.recv_exact(held, 6), b"after\n")

    def test_store_emptied_is_seeded_again(self):
        """Redis loses its data (FLUSHALL here; a restart without
        persistence is the same): the nodes see the cluster's epoch gone and
        write their apps back, all of them at once, so a port still served
        cannot be claimed by another app meanwhile."""
        self.start_cluster()
        n1, n2, n3 = self.nodes
        self.register(n1, "k0", self.app_lo)
        self.register(n2, "k1", self.app_lo + 1)
        for a in ("k0", "k1"):
            self.wait_app_online(a)
        marks = {n.name: n.mark() for n in self.nodes}
        self.assertEqual(self.redis.cmd("FLUSHALL"), "OK")
        wait_until(lambda: sorted(cl.pairs(self.redis.cmd("HGETALL", "natproxy:apps")))
                   == ["k0", "k1"], 10 * SLOW, "the apps written back to the emptied store")
        self.assertEqual(self.redis.cmd("HGET", "natproxy:ports", "tcp:%d" % self.app_lo), "k0")
        seeded = [n.name for n in self.nodes
                  if re.search(r"ev=cluster_seeded apps=2 ", n.proc.output()[marks[n.name]:])]
        self.assertTrue(seeded, "no node logged ev=cluster_seeded apps=2")
        st, resp = self.register(n3, "thief", self.app_lo, expect=409)
        for n in self.nodes:
            for a, p in (("k0", self.app_lo), ("k1", self.app_lo + 1)):
                cl.echo_check(n.addr, p, CONN_BYTES)

    def test_sentinel_failover(self):
        """Nodes given three sentinels (quorum 2, down-after 1 s) follow the
        promoted replica when the primary is killed (-9) right after a
        registration was answered 201, which is still there.

        Three sentinels with quorum 2, not one with quorum 1: that is how
        Sentinel is deployed (one sentinel would itself be a single point
        of failure), and the nodes must handle a list of sentinels."""
        primary = Redis(self, "redis-primary")
        replica = Redis(self, "redis-replica", replica_of=primary)
        primary.wait_replica_online()
        sent = cl.Sentinels(self, primary, count=3, quorum=2, down_after_ms=1000,
                            failover_timeout_ms=3000)
        sent.wait_ready()
        self.start_cluster(store_url=sent.url())
        n1, n2, n3 = self.nodes
        self.register(n1, "first", self.app_lo)
        marks = {n.name: n.mark() for n in self.nodes}
        primary.kill()  # at once after the 201
        sent.wait_promoted(replica.port)
        for n in self.nodes:
            n.wait_log(r"ev=cluster_store_up url=\S+ node=%s\b" % n.name, 30 * SLOW,
                       marks[n.name])
            wait_until(lambda n=n: n.cluster()["store"] == "up", 10 * SLOW,
                       "%s's /list saying the store is up" % n.name)
        self.assertIsNotNone(replica.cmd("HGET", "natproxy:apps", "first"),
                             "the 201 registration is not on the promoted replica")
        self.register(n2, "second", self.app_lo + 1)
        for a in ("first", "second"):
            self.wait_app_online(a)
        for n in self.nodes:
            names = [a["name"] for a in n.list()["apps"]]
            self.assertEqual(sorted(names), ["first", "second"], (n.name, names))
            cl.echo_check(n.addr, self.app_lo, CONN_BYTES)
        self.assertTrue(all(n.alive() for n in self.nodes))

    def test_fourth_node_at_runtime(self):
        """n4 started while everything runs: the private opens a tunnel to it
        without a restart, n4 serves the app, every node lists four."""
        self.start_cluster()
        port = self.app_lo
        self.register(self.nodes[0], "web", port)
        self.wait_app_online("web")
        pid, pmark = self.priv.pid, len(self.priv.output())
        n4 = self.add_node()
        for n in self.nodes:
            self.wait_nodes(n, ["n1", "n2", "n3", "n4"])
        self.priv.wait_log(r"ev=node_session_start node=n4 address=%s" %
                           n4.advertise.replace(".", r"\."), 30 * SLOW, pmark)
        self.wait_private_nodes_line(["n1", "n2", "n3", "n4"], pmark)
        self.wait_private(["n1", "n2", "n3", "n4"])
        self.wait_app_online("web", [n4])
        cl.echo_check(n4.addr, port, CONN_BYTES)
        self.assertEqual(self.priv.pid, pid)
        self.assertTrue(self.priv.alive())
        self.assertEqual(self.app_of(n4, "web")["total_connections"], 1)

    def test_proxy_protocol_gives_the_real_client(self):
        """Through HAProxy from 127.0.0.99: every node sees 127.0.0.99 with
        the client's port (/connections, its log, the app's own PROXY
        header), also on the web port; a PROXY header sent straight to a
        node from 127.0.0.1 (not listed) is the client's data on an app
        port and a bad request on the web port."""
        self.start_cluster(haproxy=True)
        rec = self.server(RecordingServer)
        port = self.app_lo
        self.register(self.nodes[0], "pp", port, target_port=rec.port, proxy_protocol=2)
        self.wait_app_online("pp")
        seen = {}
        for i in range(3):  # roundrobin: one on each node
            with cl.connect(FRONT, port, source=CLIENT) as s:
                s.sendall(b"hello %d\n" % i)
                self.assertEqual(harness.recv_exact(s, 8), b"hello %d\n" % i)
                cport = s.getsockname()[1]
                who = "%s:%d" % (CLIENT, cport)
                on = [n for n in self.nodes if who in
                      [c["client"] for c in n.connections()]]
                self.assertEqual(len(on), 1, "%s on %s" % (who, [n.name for n in on]))
                seen[on[0].name] = cport
                on[0].wait_log(r"ev=client_connected app=pp client=%s\b" %
                               who.replace(".", r"\."), 5 * SLOW)
            with rec.cond:
                stream = bytes(rec.streams[i])
            want = V2_SIG + bytes([0x21, 0x11, 0, 12]) + socket.inet_aton(CLIENT)
            self.assertTrue(stream.startswith(want), stream)
            self.assertEqual(struct.unpack(">H", stream[24:26])[0], cport, stream)
        self.assertEqual(sorted(seen), ["n1", "n2", "n3"])

        # The web port through HAProxy: the API works and a wrong token is
        # logged for the client's address on whichever node answered.
        marks = {n.name: n.mark() for n in self.nodes}
        with cl.connect(FRONT, self.ha.web_port, source=CLIENT) as s:
            s.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                      b"Connection: close\r\n\r\n")
            data = harness.recv_all(s)
        self.assertRegex(data[:20], rb"^HTTP/1\.[01] 401 ", data[:200])

        def logged():
            return any("ev=web_unauthorized client=%s " % CLIENT in n.proc.output()[marks[n.name]:]
                       for n in self.nodes)
        wait_until(logged, 5 * SLOW, "ev=web_unauthorized client=%s on a node" % CLIENT)

        # Not from the listed address: the header is data, never believed.
        n2 = self.nodes[1]
        line = b"PROXY TCP4 198.51.100.99 %s 1111 %d\r\n" % (n2.addr.encode(), port)
        with cl.connect(n2.addr, port, source="127.0.0.1") as s:
            s.sendall(line + b"data")
            self.assertEqual(harness.recv_exact(s, len(line) + 4), line + b"data")
            clients = [c["client"] for c in n2.connections()]
            self.assertIn("127.0.0.1:%d" % s.getsockname()[1], clients)
            self.assertFalse([c for c in clients if c.startswith("198.51.100.99")], clients)
        with rec.cond:
            stream = bytes(rec.streams[3])
        self.assertTrue(stream.startswith(V2_SIG + bytes([0x21, 0x11, 0, 12])
                                          + socket.inet_aton("127.0.0.1")), stream)
        with cl.connect(n2.addr, self.web_port, source="127.0.0.1") as s:
            s.sendall(line + b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                data = harness.recv_all(s)
            except ConnectionResetError:
                data = b""
        self.assertRegex(data[:20], rb"^HTTP/1\.[01] 400 ", data[:200])
        # The nodes' own log: HAProxy's address is the listed one.
        for n in self.nodes:
            n.wait_log(r"ev=accept_proxy_from net=127\.0\.0\.3/32", 5 * SLOW)
        self.assertEqual(BALANCER, "127.0.0.3")


if __name__ == "__main__":
    harness.main()
